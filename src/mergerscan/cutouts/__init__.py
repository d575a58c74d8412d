"""Image sources (stamps, frames, HTTP service) and the one shared preprocessing."""
