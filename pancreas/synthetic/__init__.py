"""pancreas/synthetic"""
