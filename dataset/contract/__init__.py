"""dataset/contract"""
