"""Hosts on one machine: Compute deployed across Linux network namespaces.

* netns: the LAN and its hosts (`Lan`, `Host`), and the faults a LAN has;
* hosted: PostgreSQL, Mosquitto and Compute's processes on those hosts, configured as a
  deployment would be (`HostedCompute`);
* balancer: one address in front of several compute-servers.

The cross-host tests (tests/hosts) and the benchmark's cross-host figures use them; they live in
the benchmark's distribution because the benchmark must not import `tests`.
"""
