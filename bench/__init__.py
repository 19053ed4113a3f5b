"""Side-by-side benchmarks of Umbranet against the tunnels users would pick instead.

`python -m bench` (root) builds two network namespaces joined by a veth pair, measures every
path (raw veth, socat, stunnel, ssh -L, wireguard-go, nebula, umbranet) with the same clients in
one invocation, and writes medians and ratios to `bench/RESULTS.md`. Ratios taken in one run on
one machine are the numbers to quote; absolute figures depend on the (shared) machine.
"""
