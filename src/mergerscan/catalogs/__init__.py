"""Catalog edges of the house: read, validate, schema, write."""
