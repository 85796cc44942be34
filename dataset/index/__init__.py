"""dataset/index"""
