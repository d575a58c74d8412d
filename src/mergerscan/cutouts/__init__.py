"""Image sources (added in one place, :mod:`.registry`: stamps, frames, HTTP service) and the one
shared preprocessing."""
