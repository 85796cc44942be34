"""What a person looks at: statistics of a label map, tumour detection, case sheets and HTML pages."""
