"""sources/synthetic"""
