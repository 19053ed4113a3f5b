"""The deployment files hang together: one non-root image, restricted pods, names and ports
that match between Services and the commands, Secrets the README creates, commands that
exist in the CLI with the options the manifests pass."""

from __future__ import annotations

import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import typer

from umbranet.cli.main import COMMANDS, _load

yaml = pytest.importorskip("yaml", reason="PyYAML is not installed (pip install -e .[dev])")

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
K8S = DEPLOY / "kubernetes"
IMAGE = "umbranet:0.1.0"
UID = 10001


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S.glob("*.yaml")):
        docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    return docs


DOCS = _documents()
WORKLOADS = [d for d in DOCS if d["kind"] in ("Deployment", "StatefulSet")]
SERVICES = {d["metadata"]["name"]: d for d in DOCS if d["kind"] == "Service"}


def _pod(workload: dict[str, Any]) -> dict[str, Any]:
    pod: dict[str, Any] = workload["spec"]["template"]["spec"]
    return pod


def _containers(workload: dict[str, Any]) -> list[dict[str, Any]]:
    pod = _pod(workload)
    return [*pod.get("initContainers", []), *pod["containers"]]


def _umbra_argv(container: dict[str, Any]) -> list[str]:
    """The `umbra` arguments a container runs (directly, or inside its `sh -c` line)."""
    if container.get("command", [])[:2] == ["sh", "-c"]:
        line = " ".join(container["args"])
        command = line.split("||")[-1]
        argv = shlex.split(command)
        assert argv[0] == "umbra", line
        return argv[1:]
    return list(container["args"])


def test_every_object_is_in_the_umbra_namespace() -> None:
    assert {d["kind"] for d in DOCS} >= {"Namespace", "Service", "StatefulSet", "Deployment"}
    for doc in DOCS:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"] == "umbra", doc["metadata"]["name"]


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w["metadata"]["name"])
def test_pods_run_restricted_as_the_image_user(workload: dict[str, Any]) -> None:
    pod = _pod(workload)
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == UID
    assert context["seccompProfile"] == {"type": "RuntimeDefault"}
    for container in _containers(workload):
        security = container["securityContext"]
        assert security["allowPrivilegeEscalation"] is False, container["name"]
        assert security["readOnlyRootFilesystem"] is True, container["name"]
        assert security["capabilities"] == {"drop": ["ALL"]}, container["name"]
    selector = workload["spec"]["selector"]["matchLabels"]
    labels = workload["spec"]["template"]["metadata"]["labels"]
    assert selector.items() <= labels.items()


@pytest.mark.parametrize("workload", WORKLOADS, ids=lambda w: w["metadata"]["name"])
def test_umbra_containers_use_one_image_and_real_commands(workload: dict[str, Any]) -> None:
    for container in _containers(workload):
        if container["image"] != IMAGE:
            continue
        argv = _umbra_argv(container)
        while argv and argv[0].startswith("--"):  # global options: --home D
            argv = argv[2:]
        assert argv[0] in COMMANDS, argv
        command = _load(argv[0])
        rest = argv[1:]
        if isinstance(command, typer.core.TyperGroup):
            command = command.commands[rest[0]]
            rest = rest[1:]
        known = {opt for p in command.params for opt in p.opts}
        for word in rest:
            if word.startswith("--"):
                assert word in known, f"{argv}: {word} is not an option of the command"


def test_services_match_the_ports_and_names_the_commands_use() -> None:
    by_name = {w["metadata"]["name"]: w for w in WORKLOADS}
    for name, service in SERVICES.items():
        workload = by_name[name]
        assert service["spec"]["selector"].items() <= _pod_labels(workload).items()
        ports = {
            p["name"]: p["containerPort"]
            for c in _pod(workload)["containers"]
            for p in c.get("ports", [])
        }
        for port in service["spec"]["ports"]:
            assert ports[port["targetPort"]] == port["port"], name
    text = "\n".join(p.read_text() for p in K8S.glob("*.yaml"))
    controller_dns = "umbra-controller.umbra.svc.cluster.local"
    # The controller is initialised with its Service name, and binds it via hostAliases.
    controller = by_name["umbra-controller"]
    assert f"--address {controller_dns}:8443" in " ".join(
        _pod(controller)["initContainers"][0]["args"]
    )
    assert _pod(controller)["hostAliases"] == [{"ip": "0.0.0.0", "hostnames": [controller_dns]}]
    assert "--advertise\n            - umbra-router.umbra.svc.cluster.local:7443" in text


def _pod_labels(workload: dict[str, Any]) -> dict[str, str]:
    labels: dict[str, str] = workload["spec"]["template"]["metadata"]["labels"]
    return labels


def test_the_app_has_the_agent_sidecar_and_its_own_identity() -> None:
    web = next(w for w in WORKLOADS if w["metadata"]["name"] == "web")
    pod = _pod(web)
    agent = next(c for c in pod["containers"] if c["name"] == "umbra-agent")
    assert _umbra_argv(agent)[0] == "up"
    enroll = _umbra_argv(pod["initContainers"][0])
    assert enroll[0] == "enroll" and "--join-key" in enroll and "--name-prefix" in enroll
    identity = next(v for v in pod["volumes"] if v["name"] == "identity")
    assert "emptyDir" in identity  # per replica, writable for renewals
    assert web["spec"]["replicas"] > 1


def test_every_secret_referenced_is_created_in_the_readme() -> None:
    readme = (K8S / "README.md").read_text()
    referenced = set(re.findall(r"secretKeyRef: \{name: ([a-z0-9-]+), key: ([a-z]+)\}", _all()))
    assert referenced
    for name, key in referenced:
        assert f"create secret generic {name} --from-file={key}=" in readme, name


def _all() -> str:
    return "\n".join(p.read_text() for p in K8S.glob("*.yaml"))


def test_containerfile_builds_one_non_root_image_with_every_part() -> None:
    text = (DEPLOY / "Containerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"]
    users = [line.split()[1] for line in lines if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] == str(UID)
    assert lines[-2:] == ['ENTRYPOINT ["umbra"]', 'CMD ["--help"]']
    assert '"umbranet[all]"' in text and '".[all]"' in text
    assert f"--uid {UID}" in text


def test_the_image_build_copies_every_file_the_package_build_reads() -> None:
    """pyproject names its readme and license files; a build without them loses the license
    from the wheel today and fails once setuptools enforces `license-files`."""
    import tomllib

    project = tomllib.loads((DEPLOY.parent / "pyproject.toml").read_text())["project"]
    needed = {project["readme"], *project.get("license-files", [])}
    text = (DEPLOY / "Containerfile").read_text()
    copied = {
        word
        for line in text.splitlines()
        if line.startswith("COPY ") and "--from" not in line
        for word in line.split()[1:-1]
    }
    assert needed <= copied, f"not copied into the build stage: {sorted(needed - copied)}"
    for name in needed:
        assert (DEPLOY.parent / name).is_file()
