"""docs/deployment.md, "A GPU worker on another host", followed word for word on the hosts.

The page marks the blocks a reader copies for that shape (`<!-- deployment-test: NAME -->`
before a fenced block): the broker users, the server's and the worker's environment files, their
systemd units, the firewall rules. This test takes them as they are and runs them: the users
added with deploy/mosquitto's add-user.sh, compute-migrate and the unit's ExecStart on the
server host with the server's file, the worker unit's ExecStart on a worker host with the
worker's file and nothing else (as systemd would: PATH and HOME besides), and checks that the
worker, which sees none of the server host's files, runs the ML jobs a client submits.

What the test changes, and only that: the page's server-box address becomes the address of the
service a variable names (the database's, the broker's, the server's; any other variable naming
it fails the test), `<...'s password>` placeholders the passwords made here, `/var/lib/compute`
a folder of each host, `/opt/compute/.venv/bin/` this checkout's programs, the database's name
this test's copy; and auth is off, as in every test here.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url

from compute_bench.harness import wait_until
from compute_bench.hosts.hosted import (
    BIN,
    BROKER,
    DATABASE,
    ROOT,
    SERVER,
    Mosquitto,
    Site,
    Worker,
)
from compute_bench.inputs import Inputs
from tests.support.uploads import uploads

pytestmark = [pytest.mark.hosts, pytest.mark.timeout(600)]

PAGE = ROOT / "docs" / "deployment.md"
_BLOCK = re.compile(r"<!-- deployment-test: (\S+) -->\n```[a-z]*\n(.*?)\n```", re.DOTALL)
#: The page's example addresses and folders, as it names them.
SERVER_BOX = "10.0.0.2"
DATA_DIR = "/var/lib/compute"
PROGRAMS = "/opt/compute/.venv/bin/"
#: Where a variable that names the server box points on the test's server host.
SERVICE_OF = {"DATABASE_URL": DATABASE, "MQTT_BROKER": BROKER, "COMPUTE_SERVER_URL": SERVER}
#: What systemd gives a service besides its EnvironmentFile (User= adds HOME).
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


def page_blocks() -> dict[str, str]:
    found = dict(_BLOCK.findall(PAGE.read_text()))
    wanted = {"broker-users", "server.env", "compute-server.service", "worker.env", "compute-worker.service"}
    assert wanted | {"firewall"} <= set(found), f"{PAGE} lacks the marked blocks {wanted - set(found)}"
    return found


def env_file(text: str) -> dict[str, str]:
    """An EnvironmentFile as systemd reads it: KEY=VALUE lines, `#` lines are comments."""
    env = {}
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        key, sep, value = line.partition("=")
        assert sep and re.fullmatch(r"[A-Z_][A-Z0-9_]*", key), f"not a KEY=VALUE line: {line!r}"
        env[key] = value
    return env


def exec_start(unit: str) -> list[str]:
    """The unit's command, after checking that it reads the page's environment file."""
    lines = unit.splitlines()
    assert "EnvironmentFile=/etc/compute/compute.env" in lines, unit
    (command,) = [line.removeprefix("ExecStart=") for line in lines if line.startswith("ExecStart=")]
    argv = shlex.split(command)
    assert argv[0].startswith(PROGRAMS), argv
    return [str(BIN / argv[0].removeprefix(PROGRAMS)), *argv[1:]]


def on_hosts(env: dict[str, str], folder: Path, passwords: dict[str, str], database: str) -> dict[str, str]:
    """The page's settings with the test's addresses, passwords, folder and database."""
    placed = {}
    for key, value in env.items():
        value = value.replace(DATA_DIR, str(folder))
        for placeholder in re.findall(r"<[^>]+>", value):
            assert placeholder in passwords, f"{key}: the test knows no value for {placeholder}"
            value = value.replace(placeholder, passwords[placeholder])
        if SERVER_BOX in value:
            assert key in SERVICE_OF, f"{key} names the server box; the test maps only {set(SERVICE_OF)}"
            value = value.replace(SERVER_BOX, SERVICE_OF[key])
        placed[key] = value
    url = make_url(placed["DATABASE_URL"])
    placed["DATABASE_URL"] = url.set(database=database).render_as_string(hide_password=False)
    return {"PATH": SYSTEMD_PATH, "HOME": str(folder), **placed}


def test_a_gpu_worker_host_set_up_as_the_deployment_page_says(
    site: Site, database: tuple[str, str], inputs: Inputs, tmp_path: Path
) -> None:
    blocks = page_blocks()
    tag, url = database
    server_dir, worker_dir = (
        site.lan.folder_of(h) / tag / "var-lib-compute" for h in (site.server, site.workers[0])
    )
    broker = Mosquitto(
        site.server, BROKER, site.lan.folder_of(site.server) / tag / "mosquitto", tmp_path / "mosquitto.log"
    )
    view = site.deployment(tag, url, tmp_path, broker)
    try:
        # The broker users, as the page adds them.
        for line in blocks["broker-users"].splitlines():
            found = re.match(r"sudo \./add-user\.sh ([^#]+)", line)
            if found:
                broker.add_user(*found.group(1).split())
        broker.start()
        passwords = {f"<{user}'s broker password>": password for user, password in broker.passwords.items()}
        passwords["<database password>"] = site.password
        database_name = str(make_url(url).database)

        server_env = on_hosts(env_file(blocks["server.env"]), server_dir, passwords, database_name)
        server_env["AUTH_DISABLED"] = "true"
        server_dir.mkdir(parents=True)
        done = site.server.run([str(BIN / "compute-migrate")], env=server_env)
        assert done.returncode == 0, done.stderr
        view.servers["server"] = site.server.spawn(
            exec_start(blocks["compute-server.service"]), env=server_env, log=tmp_path / "server.log"
        )
        view.wait_ready(view.servers["server"], "server")

        worker_env = on_hosts(env_file(blocks["worker.env"]), worker_dir, passwords, database_name)
        assert worker_env["MQTT_USERNAME"] == worker_env["WORKER_ID"], "a worker's broker user is its id"
        ports = {int(p) for p in re.findall(r"port (\d+)", blocks["firewall"])}
        used = {
            make_url(worker_env["DATABASE_URL"]).port,
            int(worker_env.get("MQTT_PORT", "1883")),
            int(worker_env["COMPUTE_SERVER_URL"].rsplit(":", 1)[1]),
        }
        assert used <= ports, f"the firewall rules open {ports}, the worker uses {used}"
        # The model files in /var/lib/compute/models (stand-ins); none of the server host's files.
        view.prepare_worker_host(site.workers[0], worker_dir)
        command = exec_start(blocks["compute-worker.service"])
        proc = site.workers[0].spawn(command, env=worker_env, log=tmp_path / "worker.log")
        view.workers["worker"] = Worker(site.workers[0], worker_env["WORKER_ID"], proc)

        tasks = command[command.index("--tasks") + 1].split(",")
        jobs = [u for u in uploads(inputs) if u[0] in tasks]
        assert len(jobs) == 4, tasks
        job_ids = view.submit(jobs)
        wait_until(
            lambda: view.alive(proc, "worker") and view.count("status = 'completed'") == len(jobs),
            300,
            "the ML jobs completed on the page's worker",
        )
        assert {r["worker_id"] for r in view.rows()} == {worker_env["WORKER_ID"]}
        for job_id in job_ids:
            view.outputs(job_id)
        # What the page's `journalctl ... | grep "job folders"` shows:
        assert f"job folders: fetched from {worker_env['COMPUTE_SERVER_URL']}" in view.log("worker")
        seen = site.workers[0].run(["ls", "-A", str(server_dir)])
        assert seen.returncode != 0 and "No such file" in seen.stderr, seen
    finally:
        view.stop()
        broker.stop()
