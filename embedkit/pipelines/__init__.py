"""End-to-end pipelines composed from the library's parts."""
