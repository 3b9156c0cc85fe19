"""The modeltest-compatible accuracy runner behind `logitsdump eval`."""
