"""The tests' toolkit: every helper a test or a conftest imports lives in this package, one job per
module. Test modules import nothing from other test modules nor from any conftest.py (the
conftest files hold fixtures and hooks only); tests/unit/test_tests_layout.py checks it.

What the tests share with the benchmark (free ports, the blocking `wait_until`, environments
without the caller's settings, brokers and whole deployments in processes) is compute_bench's,
imported from there (compute_bench.harness, compute_bench.deployment).

* waits: `wait_for`, a condition polled in the test's event loop until a deadline;
* mqtt: `MqttProbe`, a client of the test's own that records what it hears; `clear_retained`;
* brokers, databases, backends: amqtt in-process or as a process, the machine's Mosquitto and
  PostgreSQL, and the one backend of tests whose subject is not the backends;
* inprocess: settings of one test, the server app (over ASGI, or behind a real uvicorn) and workers
  in the test's event loop;
* commands: the installed command lines as a person runs them (end-to-end tests);
* auth: signing keys and bearer tokens; jobs: jobs stored, put in a state, or run through a route;
* events: worker events signed as a worker signs them; fakes: `FakeBus` (unit tests), `GatedNoop`;
* asyncapi_payloads: what the product publishes, checked against the AsyncAPI document;
* images, photos, embedding_images, exif_samples, hash_samples, videos: test media (the tiny ONNX
  stand-ins for the ML plugins' models are the benchmark's too: compute_bench.onnx_models and
  compute_bench.yunet_model);
* stall: the `test_stall` plugin of the isolation tests; fault_cluster: the fault tests' deployment;
* proxy: `CuttingProxy`, a TCP link between a worker and the server that breaks on purpose;
* uploads: one job of each task type, as the benchmark submits them (the cross-host tests).
"""
