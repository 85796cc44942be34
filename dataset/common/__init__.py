"""dataset/common"""
