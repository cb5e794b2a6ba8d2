"""Developer tools shared by the demo, the benchmark and the tests (real peers, not mocks)."""
