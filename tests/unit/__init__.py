"""In-process tests of one module each: tests/unit/test_<module>.py."""
