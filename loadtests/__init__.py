"""Load tests and benchmarks of modelyard against its real parts (see docs/benchmarks.md).

`python -m loadtests.overhead` (`make bench`) measures the latency the gateway adds over calling Triton directly.
"""
