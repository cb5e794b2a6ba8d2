"""Tests of the benchmark harness in bench/ (a smoke run and its pure logic)."""
