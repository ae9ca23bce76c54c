"""Checks the deployment files offline: what `kubectl apply -k deploy/k8s` and `docker compose
up` would run, without a cluster or Docker.

  deploy/k8s/          every manifest against the Kubernetes schemas (kubernetes-validate, strict:
                       unknown fields fail) for each of KUBERNETES_VERSIONS; the ConfigMap that
                       kustomization.yaml generates, laid out where the proxy's pod mounts it, and
                       `strangler check` on the routes.toml in it; labels, ports, volumes, probes,
                       shutdown timing and PodDisruptionBudgets checked against each other and
                       against the route table
  docker-compose.yml   the compose-spec schema (vendored by check-jsonschema); services, build
                       targets, depends_on, volumes and env files; the proxy's mounted route table
                       with `strangler check`, laid out as the bind mounts place it
  deploy/*Dockerfile   the stages the manifests and the compose file build or name
  both route tables    route exactly as the repository's routes.toml (every routing fact of
                       `strangler check --json`, and [plan]; upstream addresses differ), and each
                       upstream is a Service / compose service on the port it listens on
  scripts/dev-up       every extracted service it starts runs in compose and in Kubernetes

Each problem names the file and says what to fix. `--self-test` breaks copies of these files on
purpose, one way at a time, and fails unless each break is reported.

Run through scripts/check-deploy, which provides the Python packages in a venv.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import jsonschema
import kubernetes_validate
import kubernetes_validate.utils
import yaml
from check_jsonschema.builtin_schemas import get_builtin_schema

# kubernetes-validate parses a schema file (and the 1.8 MB of shared definitions) on every call:
# parse each once per process (the self-test checks every file dozens of times).
kubernetes_validate.utils.schema_contents = functools.lru_cache(maxsize=None)(kubernetes_validate.utils.schema_contents)

YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when the wheel has it: 10x faster

# The oldest minor we claim to run on and the newest kubernetes-validate knows: manifests must
# be valid for both (a field added in between, or one removed, fails one of them).
KUBERNETES_VERSIONS = ("1.33", "1.37")

# Services the k8s route table may name that deploy/k8s does not define, and why.
EXTERNAL_K8S_SERVICES = {"brainmessenger-legacy": "the monolith, deployed by its own manifests"}

# What the health endpoints are, and where the code that serves them is: the checker fails if
# the code no longer has them, so a renamed endpoint cannot leave the probes pointing at a 404.
PROXY_READY, PROXY_LIVE, PROXY_ADMIN_SRC = "/readyz", "/healthz", "proxy/src/admin.rs"
SERVICE_READY, SERVICE_LIVE, SERVICE_HEALTH_SRC = "/ready", "/health", "extracted/common/src/health.rs"

# The proxy's [server] defaults (proxy/src/config/compile.rs), used when a table leaves them out.
DEFAULT_GRACE_SECS, DEFAULT_SHUTDOWN_SECS = 5, 5
# Kubernetes' and compose's defaults.
DEFAULT_TERMINATION_GRACE_SECS, DEFAULT_STOP_GRACE_SECS = 30, 10

# What the checks read, relative to the repository (the self-test copies these).
INPUTS = [
    "deploy",
    "docker-compose.yml",
    "routes.toml",
    "docs/api/chat.graphql",
    "scripts/dev-up",
    PROXY_ADMIN_SRC,
    SERVICE_HEALTH_SRC,
]

K8S = "deploy/k8s"
COMPOSE = "docker-compose.yml"


@dataclass
class Problem:
    file: str
    what: str
    fix: str

    def __str__(self) -> str:
        return f"{self.file}: {self.what}\n  fix: {self.fix}"


@dataclass
class Stage:
    name: str
    env: dict[str, str] = field(default_factory=dict)


@dataclass
class Resource:
    file: str  # where it comes from, for messages
    doc: dict
    sources: dict[str, str] = field(default_factory=dict)  # a generated ConfigMap: key → file

    @property
    def kind(self) -> str:
        return self.doc.get("kind", "?")

    @property
    def name(self) -> str:
        return (self.doc.get("metadata") or {}).get("name", "?")


class Checker:
    def __init__(self, root: Path, strangler: Path):
        self.root = root
        self.strangler = strangler
        self.problems: list[Problem] = []
        self.stages: dict[str, dict[str, Stage]] = {}  # Dockerfile → its stages
        self.proxy_table: dict | None = None  # the k8s table as strangler compiled it
        self.k8s_services: dict[str, Resource] = {}

    def problem(self, file: str, what: str, fix: str) -> None:
        self.problems.append(Problem(file, what, fix))

    def run(self) -> list[Problem]:
        self.repo_table = self.table_json(self.root / "routes.toml", "routes.toml")
        for name in ("deploy/Dockerfile", "deploy/legacy.Dockerfile"):
            self.stages[name] = self.dockerfile(name)
        self.services = self.dev_up_services()
        for part in (self.check_health_endpoints_exist, self.check_k8s, self.check_compose):
            try:
                part()
            except Exception as e:  # a shape the checks did not expect: say so, never pass
                self.problem(part.__name__, f"the checker could not read the files: {type(e).__name__}: {e}",
                             "fix the file the problems above name, or scripts/check_deploy.py")
        seen, unique = set(), []
        for p in self.problems:  # a fact read twice (a Dockerfile stage) is reported once
            if str(p) not in seen:
                seen.add(str(p))
                unique.append(p)
        return unique

    # ---- shared facts ----------------------------------------------------------------------

    def dockerfile(self, rel: str) -> dict[str, Stage]:
        """The stages of a Dockerfile (`FROM … AS name`), with the ENV each sets or inherits."""
        path = self.root / rel
        if not path.is_file():
            self.problem(rel, "no such Dockerfile", "restore it or fix the references to it")
            return {}
        text = re.sub(r"\\\n", " ", path.read_text())
        stages: dict[str, Stage] = {}
        current: Stage | None = None
        unnamed = 0
        for line in text.splitlines():
            words = line.strip().split()
            if not words or words[0].startswith("#"):
                continue
            op = words[0].upper()
            if op == "FROM":
                args = [w for w in words[1:] if not w.startswith("--")]
                base = args[0] if args else ""
                if len(args) >= 3 and args[1].upper() == "AS":
                    name = args[2]
                else:
                    name, unnamed = f"#{unnamed}", unnamed + 1
                if name in stages:
                    self.problem(rel, f"stage `{name}` is defined twice", "give each stage its own name")
                current = Stage(name, dict(stages[base].env) if base in stages else {})
                stages[name] = current
            elif op == "ENV" and current is not None:
                rest = line.strip()[3:].strip()
                if "=" in rest.split()[0]:
                    for kv in shlex.split(rest):
                        k, _, v = kv.partition("=")
                        current.env[k] = v
                else:
                    k, _, v = rest.partition(" ")
                    current.env[k] = v.strip()
            elif op == "COPY" and current is not None:
                for w in words[1:]:
                    if w.startswith("--from="):
                        src = w.split("=", 1)[1]
                        if src not in stages and not re.search(r"[:/.]", src):
                            self.problem(rel, f"stage `{current.name}` copies from `{src}`, which is no earlier stage",
                                         "name a stage defined above it (FROM … AS name) or a full image name")
        return stages

    def dev_up_services(self) -> list[str]:
        """The extracted services scripts/dev-up starts (`start_bg NAME … target/release/bm-…`)."""
        text = (self.root / "scripts/dev-up").read_text()
        names = re.findall(r"^start_bg (\S+) .*target/release/bm-[\w-]+", text, re.M)
        if not names:
            self.problem("scripts/dev-up", "no `start_bg NAME … target/release/bm-…` line found",
                         "scripts/check_deploy.py reads the extracted services from those lines: keep the form or update it")
        return names

    def check_health_endpoints_exist(self) -> None:
        for src, paths in ((PROXY_ADMIN_SRC, (PROXY_READY, PROXY_LIVE)), (SERVICE_HEALTH_SRC, (SERVICE_READY, SERVICE_LIVE))):
            text = (self.root / src).read_text()
            for p in paths:
                if f'"{p}"' not in text:
                    self.problem(src, f"no longer serves `{p}`, which the probes in {K8S} call",
                                 f"update the probes and PROXY_*/SERVICE_* in scripts/check_deploy.py")
        for svc in self.services:
            main = self.root / "extracted" / svc / "src/main.rs"
            if main.is_file() and "readiness.router()" not in main.read_text():
                self.problem(f"extracted/{svc}/src/main.rs", f"does not merge `readiness.router()`: no {SERVICE_READY} or {SERVICE_LIVE}",
                             "merge bm_common::health::Readiness's router, as the other services do")

    def table_json(self, path: Path, file: str, mounted: str = "", mount_dir: str = "", missing_fix: str = "") -> dict | None:
        """`strangler check --json` on a table laid out at `path`; its errors become problems
        located in `file` (the table in the repository), with `mounted` saying where it runs.
        A file the table names that is not beside it (`./x` under `mount_dir`) is shown at its
        path in the container, with `missing_fix` as the fix."""
        try:
            out = subprocess.run([str(self.strangler), "check", path.name, "--json"], cwd=path.parent,
                                 capture_output=True, text=True, timeout=60)
        except OSError as e:
            self.problem(file, f"cannot run {self.strangler}: {e}", "build it: cargo build -p strangler")
            return None
        try:
            result = json.loads(out.stdout)
        except json.JSONDecodeError:
            self.problem(file, f"`strangler check` failed: {out.stderr.strip() or out.stdout.strip()}", "see the error above")
            return None
        for e in result.get("errors", []):
            msg, fix = e["message"], e.get("hint") or "see docs/routes.md"
            if mount_dir and "./" in msg:
                msg = re.sub(r"(?<![\w.])\./", mount_dir.rstrip("/") + "/", msg)
                if "No such file" in msg and missing_fix:
                    fix = missing_fix
            self.problem(f"{file}:{e.get('line')}:{e.get('column')}{' ' + mounted if mounted else ''}", msg, fix)
        return result.get("table") if result.get("valid") else None

    def table_toml(self, data: str) -> dict:
        try:
            return tomllib.loads(data)
        except tomllib.TOMLDecodeError:
            return {}  # strangler check reports it

    def compare_routing(self, table: dict | None, label: str) -> None:
        """A deployment table routes as the repository's routes.toml does (addresses aside)."""
        if table is None or self.repo_table is None:
            return
        # every routing fact `strangler check --json` shows, except where the route is written
        keys = sorted({k for r in self.repo_table["routes"] + table["routes"] for k in r} - {"line", "name"})
        ours = {r["name"]: {k: r.get(k) for k in keys} for r in self.repo_table["routes"]}
        theirs = {r["name"]: {k: r.get(k) for k in keys} for r in table["routes"]}
        shown = lambda v: "unset" if v is None else repr(v)  # noqa: E731
        for name in sorted(ours.keys() - theirs.keys()):
            self.problem(label, f"has no route `{name}`, which routes.toml has",
                         f"copy route `{name}` (and its upstream) from routes.toml, with this deployment's address")
        for name in sorted(theirs.keys() - ours.keys()):
            self.problem(label, f"has a route `{name}` that routes.toml does not",
                         "route as routes.toml does: remove it, or add it to routes.toml first")
        for name in sorted(ours.keys() & theirs.keys()):
            for k in keys:
                if ours[name][k] != theirs[name][k]:
                    self.problem(label, f"route `{name}`: {k} is {shown(theirs[name][k])}; routes.toml has {shown(ours[name][k])}",
                                 "a cut-over step changes routes.toml and both deployment tables in one commit")
        want = {u["name"] for u in self.repo_table["upstreams"]}
        have = {u["name"] for u in table["upstreams"]}
        if want != have:
            self.problem(label, f"upstreams {sorted(have)}; routes.toml has {sorted(want)}", "declare the same upstreams, with this deployment's addresses")
        if table.get("plan") != self.repo_table.get("plan"):
            self.problem(label, "its [plan] differs from routes.toml's", "copy [plan] from routes.toml")
        if table.get("default_upstream") != self.repo_table.get("default_upstream"):
            self.problem(label, f"default upstream `{table.get('default_upstream')}`; routes.toml has `{self.repo_table.get('default_upstream')}`",
                         "use the same default upstream")

    # ---- Kubernetes ------------------------------------------------------------------------

    def check_k8s(self) -> None:
        resources = self.k8s_resources()
        # a resource the schemas reject is reported once, and its contents are not read further
        # (a string where a number belongs would only make the checks below misread it)
        valid = [r for r in resources if self.validate_schema(r)]
        every = {(r.kind, r.name) for r in resources}
        deployments = [r for r in valid if r.kind == "Deployment"]
        services = [r for r in valid if r.kind == "Service"]
        pdbs = [r for r in valid if r.kind == "PodDisruptionBudget"]
        configmaps = {r.name: r for r in valid if r.kind == "ConfigMap"}

        def selected(selector: dict, d: Resource) -> bool:
            labels = ((d.doc.get("spec") or {}).get("template") or {}).get("metadata", {}).get("labels") or {}
            return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

        for d in deployments:
            self.check_deployment(d, configmaps)
        for s in services:
            spec = s.doc.get("spec") or {}
            targets = [d for d in deployments if selected(spec.get("selector") or {}, d)]
            if not targets and len(deployments) == sum(k == "Deployment" for k, _ in every):
                self.problem(s.file, f"Service {s.name} selects no Deployment's pods ({spec.get('selector')})",
                             "make the selector match a Deployment's spec.template.metadata.labels")
            for p in spec.get("ports") or []:
                tp = p.get("targetPort", p.get("port"))
                for d in targets:
                    if self.container_port(d, tp) is None:
                        self.problem(s.file, f"Service {s.name} port {p.get('port')} targets `{tp}`, which no container of Deployment {d.name} declares",
                                     "name a containerPort of the pod (ports[].name or its number)")
        for d in deployments:
            replicas = (d.doc.get("spec") or {}).get("replicas", 1)
            budgets = [p for p in pdbs if selected(((p.doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}, d)]
            if replicas >= 2 and not budgets:
                self.problem(d.file, f"Deployment {d.name} runs {replicas} replicas and no PodDisruptionBudget selects them: a node drain may stop all at once",
                             "add a policy/v1 PodDisruptionBudget with maxUnavailable: 1 and the Deployment's pod labels")
            for p in budgets:
                spec = p.doc["spec"]
                if "maxUnavailable" in spec and spec["maxUnavailable"] in (0, "0%"):
                    self.problem(p.file, f"PodDisruptionBudget {p.name} allows no disruption: node drains block forever", "use maxUnavailable: 1")
                if isinstance(spec.get("minAvailable"), int) and spec["minAvailable"] >= replicas:
                    self.problem(p.file, f"PodDisruptionBudget {p.name} needs {spec['minAvailable']} of {replicas} pods available: node drains block forever",
                                 "use maxUnavailable: 1 (or minAvailable below replicas)")
        for p in pdbs:
            sel = ((p.doc.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
            if not any(selected(sel, d) for d in deployments) and len(deployments) == sum(k == "Deployment" for k, _ in every):
                self.problem(p.file, f"PodDisruptionBudget {p.name} selects no Deployment's pods ({sel})",
                             "make spec.selector.matchLabels match the Deployment's pod labels")

        by_name = {d.name: d for d in deployments}
        for svc in self.services:
            d = by_name.get(svc)
            if d is None and ("Deployment", svc) in every:
                continue  # invalid, reported above
            if d is None:
                self.problem(K8S, f"scripts/dev-up runs the `{svc}` service, but no Deployment `{svc}` is in kustomization.yaml's resources",
                             f"add deploy/k8s/{svc}.yaml (Deployment, Service, PodDisruptionBudget; see auth.yaml) and list it")
                continue
            self.check_service_probes(d, svc)
        self.k8s_services = {s.name: s for s in services}
        self.check_k8s_upstreams()

    def k8s_resources(self) -> list[Resource]:
        """What `kubectl kustomize deploy/k8s` builds: the listed files and the generated ConfigMaps."""
        kpath = self.root / K8S / "kustomization.yaml"
        klabel = f"{K8S}/kustomization.yaml"
        if not kpath.is_file():
            self.problem(klabel, "missing", "list the manifests and the strangler-routes configMapGenerator in it")
            return []
        k = yaml.load(kpath.read_text(), Loader=YAML_LOADER) or {}
        known = {"apiVersion", "kind", "resources", "configMapGenerator", "generatorOptions"}
        for key in k.keys() - known:
            self.problem(klabel, f"`{key}` is not something this checker emulates", "teach scripts/check_deploy.py what kustomize does with it")
        listed = k.get("resources") or []
        resources: list[Resource] = []
        for f in listed:
            path = self.root / K8S / f
            if not path.is_file():
                self.problem(klabel, f"resource `{f}` does not exist", f"create {K8S}/{f} or remove it from resources")
                continue
            try:
                docs = [d for d in yaml.load_all(path.read_text(), Loader=YAML_LOADER) if d]
            except yaml.YAMLError as e:
                self.problem(f"{K8S}/{f}", f"not valid YAML: {e}", "fix the YAML")
                continue
            resources += [Resource(f"{K8S}/{f}", d) for d in docs]
        for path in sorted((self.root / K8S).glob("*.y*ml")):
            if path.name != "kustomization.yaml" and path.name not in listed:
                self.problem(f"{K8S}/{path.name}", "not listed in kustomization.yaml's resources: `kubectl apply -k` would never apply it",
                             "add it to resources (or delete it)")
        for g in k.get("configMapGenerator") or []:
            data, sources = {}, {}
            for entry in g.get("files") or []:
                key, _, src = entry.partition("=") if "=" in entry else (os.path.basename(entry), "", entry)
                path = self.root / K8S / src
                real = path.resolve()
                if not real.is_relative_to((self.root / K8S).resolve()):
                    self.problem(klabel, f"configMapGenerator {g.get('name')}: `{src}` is outside {K8S}; kustomize refuses it",
                                 f"keep a copy in {K8S} (and check it is the same, as chat.graphql is)")
                if not path.is_file():
                    self.problem(klabel, f"configMapGenerator {g.get('name')}: `{src}` does not exist", f"create {K8S}/{src} or remove it")
                    continue
                data[key], sources[key] = path.read_text(), f"{K8S}/{src}"
            for lit in g.get("literals") or []:
                key, _, value = lit.partition("=")
                data[key] = value
            doc = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": g.get("name")}, "data": data}
            resources.append(Resource(f"{klabel}, configMapGenerator {g.get('name')}", doc, sources))
        # the schema copy the ConfigMap carries is the one the repository records
        self.same_schema_copy(f"{K8S}/chat.graphql")
        return resources

    def same_schema_copy(self, copy_path: str) -> None:
        """A deployment's copy of the GraphQL schema is the one the repository records."""
        copy_, original = self.root / copy_path, self.root / "docs/api/chat.graphql"
        if copy_.is_file() and original.is_file() and copy_.read_bytes() != original.read_bytes():
            self.problem(copy_path, "differs from docs/api/chat.graphql, the schema the proxy is tested with",
                         f"cp docs/api/chat.graphql {copy_path} (scripts/chat-schema writes every copy)")

    def validate_schema(self, r: Resource) -> bool:
        if not isinstance(r.doc, dict) or "apiVersion" not in r.doc or "kind" not in r.doc:
            self.problem(r.file, "a document without apiVersion and kind", "every document is a Kubernetes object")
            return False
        for version in KUBERNETES_VERSIONS:
            try:
                kubernetes_validate.validate(r.doc, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                at = ".".join(str(p) for p in e.path) or "(top level)"
                self.problem(r.file, f"{r.kind} {r.name} is not valid for Kubernetes {version}: {at}: {e.message}",
                             "fix the field (strict: unknown fields are errors, as `kubectl apply --validate=strict` makes them)")
                return False  # the same mistake again for the next version says nothing new
            except kubernetes_validate.SchemaNotFoundError:
                self.problem(r.file, f"{r.kind} with apiVersion {r.doc['apiVersion']} does not exist in Kubernetes {version}",
                             "use the kind's current apiVersion (kubectl explain KIND)")
                return False
        return True

    @staticmethod
    def containers(d: Resource) -> list[dict]:
        return (((d.doc.get("spec") or {}).get("template") or {}).get("spec") or {}).get("containers") or []

    @staticmethod
    def pod_spec(d: Resource) -> dict:
        return ((d.doc.get("spec") or {}).get("template") or {}).get("spec") or {}

    def container_port(self, d: Resource, port) -> int | None:
        for c in self.containers(d):
            for p in c.get("ports") or []:
                if port == p.get("name") or port == p.get("containerPort"):
                    return p.get("containerPort")
        return None

    def image_target(self, image: str) -> str:
        """`bm-auth:latest` → `auth`, `strangler:latest` → `strangler`: the deploy/Dockerfile
        stage that builds it (the convention of the build commands in each manifest)."""
        name = image.rsplit("/", 1)[-1].split(":", 1)[0].split("@", 1)[0]
        return name.removeprefix("bm-")

    @staticmethod
    def prestop_sleep(c: dict) -> int | None:
        cmd = (((c.get("lifecycle") or {}).get("preStop") or {}).get("exec") or {}).get("command") or []
        if len(cmd) == 2 and cmd[0] in ("sleep", "/bin/sleep") and str(cmd[1]).isdigit():
            return int(cmd[1])
        sleep = (((c.get("lifecycle") or {}).get("preStop") or {}).get("sleep") or {}).get("seconds")
        return sleep

    def check_deployment(self, d: Resource, configmaps: dict[str, Resource]) -> None:
        spec = d.doc.get("spec") or {}
        labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
        sel = (spec.get("selector") or {}).get("matchLabels") or {}
        if not sel or any(labels.get(k) != v for k, v in sel.items()):
            self.problem(d.file, f"Deployment {d.name}: selector {sel} does not match the pod labels {labels}; the API server rejects it",
                         "make spec.selector.matchLabels a subset of spec.template.metadata.labels")
        pod = self.pod_spec(d)
        volumes = {v.get("name"): v for v in pod.get("volumes") or []}
        for c in self.containers(d):
            where = f"Deployment {d.name}, container {c.get('name')}"
            for m in c.get("volumeMounts") or []:
                v = volumes.get(m.get("name"))
                if v is None:
                    self.problem(d.file, f"{where}: mounts volume `{m.get('name')}`, which the pod does not declare", "add it to spec.template.spec.volumes")
                elif "configMap" in v and v["configMap"].get("name") not in configmaps:
                    self.problem(d.file, f"{where}: volume `{v['name']}` is ConfigMap `{v['configMap'].get('name')}`, which deploy/k8s does not define",
                                 "generate it in kustomization.yaml (configMapGenerator) or fix the name")
            for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
                port = ((c.get(probe) or {}).get("httpGet") or {}).get("port")
                if port is not None and self.container_port(d, port) is None:
                    self.problem(d.file, f"{where}: {probe} uses port `{port}`, which the container does not declare", "name one of its ports")
            target = self.image_target(c.get("image", ""))
            if target not in self.stages.get("deploy/Dockerfile", {}):
                self.problem(d.file, f"{where}: image `{c.get('image')}` has no deploy/Dockerfile stage `{target}` to build it",
                             f"add `FROM runtime AS {target}` to deploy/Dockerfile or fix the image name (bm-NAME builds stage NAME)")
            env = {e.get("name"): e.get("value") for e in c.get("env") or []}
            http = self.container_port(d, "http")
            if env.get("PORT") is not None and http is not None and str(http) != str(env["PORT"]):
                self.problem(d.file, f"{where}: listens on PORT={env['PORT']} but its `http` port is {http}", "make them the same")
            if target == "strangler":
                if not isinstance(spec.get("replicas", 1), int) or spec.get("replicas", 1) < 2:
                    self.problem(d.file, f"Deployment {d.name} runs {spec.get('replicas', 1)} replica(s) of the edge: every restart or node drain is an outage",
                                 "replicas: 2 or more (with the PodDisruptionBudget)")
                self.check_proxy(d, c, volumes, configmaps)

    def check_service_probes(self, d: Resource, svc: str) -> None:
        for c in self.containers(d):
            where = f"Deployment {d.name}, container {c.get('name')}"
            for probe, path in (("readinessProbe", SERVICE_READY), ("livenessProbe", SERVICE_LIVE)):
                got = ((c.get(probe) or {}).get("httpGet") or {})
                if got.get("path") != path or self.container_port(d, got.get("port")) != self.container_port(d, "http"):
                    self.problem(d.file, f"{where}: {probe} is {got or 'missing'}; the service answers {path} on its http port ({SERVICE_HEALTH_SRC})",
                                 f"{probe}: {{ httpGet: {{ path: {path}, port: http }} }}")
            self.check_termination(d, c, 0, "")

    def check_termination(self, d: Resource, c: dict, drain_secs: int, why: str) -> None:
        where = f"Deployment {d.name}, container {c.get('name')}"
        sleep = self.prestop_sleep(c)
        if sleep is None:
            self.problem(d.file, f"{where}: no preStop sleep: it stops accepting at SIGTERM while kube-proxy and load balancers still send to it",
                         'lifecycle: { preStop: { exec: { command: ["sleep", "5"] } } }')
            sleep = 0
        tgp = self.pod_spec(d).get("terminationGracePeriodSeconds", DEFAULT_TERMINATION_GRACE_SECS)
        if tgp <= sleep + drain_secs:
            drain = f" + {drain_secs} s ({why})" if drain_secs else ""
            self.problem(d.file, f"{where}: terminationGracePeriodSeconds {tgp} ≤ preStop {sleep} s{drain}: the kubelet kills it mid-drain",
                         f"set terminationGracePeriodSeconds above {sleep + drain_secs}")

    def check_proxy(self, d: Resource, c: dict, volumes: dict, configmaps: dict[str, Resource]) -> None:
        where = f"Deployment {d.name}, container {c.get('name')}"
        args = [str(a) for a in (c.get("args") or []) + (c.get("command") or [])]
        config = args[args.index("--config") + 1] if "--config" in args[:-1] else None
        if config is None:
            self.problem(d.file, f"{where}: no `--config PATH` in args", 'args: ["serve", "--config", "/etc/strangler/routes.toml"]')
            return
        mount = next((m for m in c.get("volumeMounts") or [] if config.startswith(m.get("mountPath", "").rstrip("/") + "/")), None)
        vol = volumes.get(mount.get("name")) if mount else None
        cm = configmaps.get(((vol or {}).get("configMap") or {}).get("name"))
        if cm is None:
            self.problem(d.file, f"{where}: --config {config} is on no ConfigMap volume", "mount the strangler-routes ConfigMap at the folder of --config")
            return
        key = config[len(mount["mountPath"].rstrip("/")) + 1:]
        data = cm.doc.get("data") or {}
        if key not in data:
            self.problem(cm.file, f"has no key `{key}`, which {d.file} reads as {config}", f"add {key} to the ConfigMap")
            return
        source = cm.sources.get(key, f"{cm.file} (key {key})")
        # lay the ConfigMap out as the kubelet mounts it, and check the table there
        with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmp:
            mdir = Path(tmp + mount["mountPath"])
            mdir.mkdir(parents=True)
            for k, v in data.items():
                (mdir / k).write_text(v)
            table = self.table_json(mdir / key, source, f"(mounted at {config} from ConfigMap {cm.name})", mount["mountPath"],
                                    f"add the file to ConfigMap {cm.name} ({cm.file}), or fix the path in the table")
        self.compare_routing(table, source)
        toml = self.table_toml(data[key])
        server = toml.get("server") or {}
        grace = server.get("grace_period_secs", DEFAULT_GRACE_SECS)
        shutdown = server.get("shutdown_timeout_secs", DEFAULT_SHUTDOWN_SECS)
        self.check_termination(d, c, grace + shutdown, f"grace_period_secs {grace} + shutdown_timeout_secs {shutdown} in {source}")
        admin = (toml.get("admin") or {}).get("addr", "")
        host, _, port = admin.rpartition(":")
        if host.startswith("127.") or host in ("localhost", "[::1]"):
            self.problem(source, f"[admin] addr = {admin}: the kubelet probes the pod's address, not loopback, so /readyz never answers",
                         'addr = "0.0.0.0:9901" with token_env set')
        for probe, path in (("readinessProbe", PROXY_READY), ("livenessProbe", PROXY_LIVE)):
            got = (c.get(probe) or {}).get("httpGet") or {}
            if got.get("path") != path or str(self.container_port(d, got.get("port"))) != port:
                self.problem(d.file, f"{where}: {probe} is {got or 'missing'}; the proxy answers {path} on its admin listener, port {port or '?'} in {source} ({PROXY_ADMIN_SRC})",
                             f"{probe}: {{ httpGet: {{ path: {path}, port: admin }} }} with the admin containerPort {port}")
        for listener in toml.get("listeners") or []:
            lport = listener.get("addr", "").rpartition(":")[2]
            if lport.isdigit() and self.container_port(d, int(lport)) is None:
                self.problem(d.file, f"{where}: the listener {listener.get('addr')} of {source} is no containerPort", "declare it under ports")
        env = {e.get("name") for e in c.get("env") or []}
        for var in ((toml.get("admin") or {}).get("token_env"), (toml.get("shadow") or {}).get("database_url_env")):
            if var and var not in env:
                self.problem(d.file, f"{where}: {source} reads ${var}, which the container's env does not set", f"set {var} (from a Secret)")
        shadow = toml.get("shadow") or {}
        if shadow.get("store", "jsonl") == "jsonl":
            store = os.path.normpath(os.path.join(os.path.dirname(config), shadow.get("store_dir", "shadow-store")))
            if store.startswith(mount["mountPath"].rstrip("/") + "/"):
                self.problem(source, f"the shadow store ({store}) is inside the read-only ConfigMap mount: no comparison would be stored",
                             'with several replicas use [shadow] store = "postgres" (docs/routes.md); else an absolute store_dir on a writable volume')
        self.proxy_table = table

    def check_k8s_upstreams(self) -> None:
        """Each upstream of the k8s table is a Service of deploy/k8s on a port it exposes."""
        table = self.proxy_table
        if table is None:
            return
        for u in table["upstreams"]:
            m = re.match(r"^https?://([^/:]+)(?::(\d+))?", u["url"])
            host, port = m.group(1), int(m.group(2) or (443 if u["url"].startswith("https") else 80))
            name = host.split(".")[0]
            if name in EXTERNAL_K8S_SERVICES:
                continue
            svc = self.k8s_services.get(name)
            if svc is None:
                self.problem(f"{K8S}/routes.toml", f"upstream `{u['name']}` is {u['url']}, and deploy/k8s has no Service `{name}`",
                             f"add a Service `{name}` or fix the URL (external ones: EXTERNAL_K8S_SERVICES in scripts/check_deploy.py)")
            elif port not in [p.get("port") for p in (svc.doc.get("spec") or {}).get("ports") or []]:
                self.problem(f"{K8S}/routes.toml", f"upstream `{u['name']}` is {u['url']}; Service `{name}` ({svc.file}) has no port {port}",
                             "use the Service's port")

    # ---- docker compose ----------------------------------------------------------------------

    def check_compose(self) -> None:
        # the proxy's folder mounted whole carries its own copy of the schema
        self.same_schema_copy("deploy/compose/chat.graphql")
        path = self.root / COMPOSE
        try:
            doc = yaml.load(path.read_text(), Loader=YAML_LOADER)
        except (OSError, yaml.YAMLError) as e:
            self.problem(COMPOSE, f"cannot read it: {e}", "fix the YAML")
            return
        validator = jsonschema.Draft202012Validator(get_builtin_schema("vendor.compose-spec"))
        errors = sorted(validator.iter_errors(doc), key=lambda e: list(map(str, e.path)))
        for e in errors:
            at = ".".join(str(p) for p in e.path) or "(top level)"
            self.problem(COMPOSE, f"{at}: {e.message}", "see the compose specification (compose-spec.io) for that key")
        if errors:
            return  # what the schema rejects would only be misread below
        services = (doc or {}).get("services") or {}
        if not isinstance(services, dict):
            return
        named_volumes = set(((doc or {}).get("volumes") or {}).keys())
        for name, s in services.items():
            if not isinstance(s, dict):
                continue
            where = f"service `{name}`"
            if "image" not in s and "build" not in s:
                self.problem(COMPOSE, f"{where} has neither image nor build", "add one")
            stage = self.compose_stage(name, s)
            deps = s.get("depends_on") or []
            for dep in deps:
                if dep not in services:
                    self.problem(COMPOSE, f"{where} depends on `{dep}`, which is no service", "fix the name or add the service")
                    continue
                cond = (deps[dep] or {}).get("condition") if isinstance(deps, dict) else None
                if cond == "service_healthy" and "healthcheck" not in (services[dep] or {}):
                    self.problem(COMPOSE, f"{where} waits for `{dep}` to be healthy, and `{dep}` has no healthcheck: it never starts",
                                 f"give `{dep}` a healthcheck or wait for service_started")
            for v in s.get("volumes") or []:
                src = v.get("source") if isinstance(v, dict) else v.split(":")[0] if ":" in v else None
                if not src:
                    continue
                if src.startswith((".", "/", "~")):
                    if not (self.root / src).exists():
                        self.problem(COMPOSE, f"{where} mounts `{src}`, which does not exist", "fix the path (relative to the compose file)")
                elif src not in named_volumes:
                    self.problem(COMPOSE, f"{where} mounts the volume `{src}`, which the top-level volumes do not declare", f"add `{src}:` under volumes")
            for f in ([s["env_file"]] if isinstance(s.get("env_file"), str) else s.get("env_file") or []):
                f = f["path"] if isinstance(f, dict) else f
                if not (self.root / f).is_file():
                    self.problem(COMPOSE, f"{where} reads env_file `{f}`, which does not exist", "create it or remove the line")
            if stage and stage.name == "strangler":
                self.check_compose_proxy(name, s, services)
        for svc in self.services:
            s = services.get(svc)
            target = ((s or {}).get("build") or {}).get("target") if isinstance((s or {}).get("build"), dict) else None
            if s is None or target != svc:
                self.problem(COMPOSE, f"scripts/dev-up runs the `{svc}` service; the compose file has no service `{svc}` built from target `{svc}`",
                             f"add `{svc}: {{ build: {{ context: ., dockerfile: deploy/Dockerfile, target: {svc} }} }}` with its environment (see auth)")

    def compose_stage(self, name: str, s: dict) -> Stage | None:
        build = s.get("build")
        if build is None:
            return None
        if isinstance(build, str):
            build = {"context": build}
        context = build.get("context", ".")
        dockerfile = os.path.normpath(os.path.join(context, build.get("dockerfile", "Dockerfile")))
        stages = self.stages.get(dockerfile)
        if stages is None:
            if not (self.root / dockerfile).is_file():
                self.problem(COMPOSE, f"service `{name}` builds {dockerfile}, which does not exist", "fix build.dockerfile (relative to build.context)")
                return None
            stages = self.stages[dockerfile] = self.dockerfile(dockerfile)
        target = build.get("target")
        if target is None:
            return list(stages.values())[-1] if stages else None
        if target not in stages:
            self.problem(COMPOSE, f"service `{name}` builds target `{target}`, which {dockerfile} does not define (stages: {', '.join(k for k in stages if not k.startswith('#'))})",
                         f"add `FROM … AS {target}` to {dockerfile} or fix build.target")
            return None
        return stages[target]

    def compose_port(self, services: dict, name: str) -> int | None:
        """The port a compose service listens on: its PORT, from environment or its image's ENV."""
        s = services.get(name) or {}
        env = s.get("environment") or {}
        if isinstance(env, list):
            env = dict(e.split("=", 1) for e in env if "=" in e)
        if "PORT" in env:
            return int(env["PORT"])
        stage = self.compose_stage(name, s)
        if stage and "PORT" in stage.env:
            return int(stage.env["PORT"])
        for a in s.get("command") or []:  # `--listen 0.0.0.0:4010` and the like
            m = re.fullmatch(r"[\w.]*:(\d+)", str(a))
            if m:
                return int(m.group(1))
        return None

    def check_compose_proxy(self, name: str, s: dict, services: dict) -> None:
        where = f"service `{name}`"
        cmd = [str(a) for a in s.get("command") or []]
        config = cmd[cmd.index("--config") + 1] if "--config" in cmd[:-1] else None
        if config is None:
            self.problem(COMPOSE, f"{where}: no `--config PATH` in command", 'command: ["serve", "--config", "/etc/strangler/routes.toml"]')
            return
        mounts = {}
        for v in s.get("volumes") or []:
            if isinstance(v, str) and v.startswith("."):
                src, dst = v.split(":")[:2]
                mounts[dst.rstrip("/")] = src
        config_dir = os.path.dirname(config)
        if config in mounts:
            # an editor saves by writing a new file and renaming it over the old one; a file bind
            # mount keeps the old inode, so the proxy would never see the edit (nor a reload)
            self.problem(COMPOSE, f"{where}: the route table is bind-mounted as a file ({mounts[config]}:{config}): an edit saved by "
                         "renaming a new file over it never reaches the container, and neither the watcher nor POST /reload sees it",
                         f"mount its folder instead: {os.path.dirname(mounts[config]) or '.'}:{config_dir}:ro")
            source = os.path.normpath(mounts[config])
        elif config_dir in mounts:
            source = os.path.normpath(os.path.join(mounts[config_dir], os.path.basename(config)))
        else:
            self.problem(COMPOSE, f"{where}: --config {config} is in no bind-mounted folder", f"mount the route table's folder at {config_dir}")
            return
        with tempfile.TemporaryDirectory(prefix="check-deploy-") as tmp:
            for dst, src in mounts.items():
                if (self.root / src).is_file():
                    (Path(tmp + os.path.dirname(dst))).mkdir(parents=True, exist_ok=True)
                    shutil.copyfile(self.root / src, tmp + dst)
                elif (self.root / src).is_dir():
                    shutil.copytree(self.root / src, tmp + dst, dirs_exist_ok=True)
            if not (self.root / source).is_file():
                self.problem(COMPOSE, f"{where}: --config {config} is `{source}` on the host, which does not exist", "fix the path or the mount")
                return
            if not Path(tmp + config).is_file():
                return  # the missing host file is reported with the volumes
            table = self.table_json(Path(tmp + config), source, f"(mounted at {config} in {where})", os.path.dirname(config),
                                    f"bind-mount the file into {os.path.dirname(config)} in {where}'s volumes, or fix the path in the table")
        self.compare_routing(table, source)
        toml = self.table_toml((self.root / source).read_text())
        server = toml.get("server") or {}
        drain = server.get("grace_period_secs", DEFAULT_GRACE_SECS) + server.get("shutdown_timeout_secs", DEFAULT_SHUTDOWN_SECS)
        stop = duration_secs(s.get("stop_grace_period"), DEFAULT_STOP_GRACE_SECS)
        if stop <= drain:
            self.problem(COMPOSE, f"{where}: stop_grace_period is {stop} s; grace_period_secs + shutdown_timeout_secs in {source} are {drain} s: Docker kills it mid-drain",
                         f"stop_grace_period: {drain + 5}s")
        admin_port = (toml.get("admin") or {}).get("addr", "").rpartition(":")[2]
        test = " ".join(map(str, ((s.get("healthcheck") or {}).get("test") or [])))
        m = re.search(r":(\d+)/readyz", test)
        if m is None or m.group(1) != admin_port:
            self.problem(COMPOSE, f"{where}: healthcheck is `{test}`; the proxy answers {PROXY_READY} on its admin port {admin_port} ({source})",
                         f'test: ["CMD", "curl", "-fsS", "http://127.0.0.1:{admin_port}/readyz"]')
        published = {str(p).rpartition(":")[2] for p in s.get("ports") or []}
        for listener in toml.get("listeners") or []:
            lport = listener.get("addr", "").rpartition(":")[2]
            if lport not in published:
                self.problem(COMPOSE, f"{where}: the listener {listener.get('addr')} of {source} is not published", f'ports: ["{lport}:{lport}"]')
        if table is None:
            return
        for u in table["upstreams"]:
            m = re.match(r"^https?://([^/:]+)(?::(\d+))?", u["url"])
            host, port = m.group(1), int(m.group(2) or 80)
            if host not in services:
                self.problem(source, f"upstream `{u['name']}` is {u['url']}, and {COMPOSE} has no service `{host}`", "use a compose service name as the host")
            elif self.compose_port(services, host) != port:
                self.problem(source, f"upstream `{u['name']}` is {u['url']}; service `{host}` listens on {self.compose_port(services, host)}",
                             "use the port the service listens on (its PORT)")


def duration_secs(value, default: int) -> int:
    if value is None:
        return default
    total = 0
    for n, unit in re.findall(r"(\d+)(h|ms|m|s|us)", str(value)):
        total += int(n) * {"h": 3600, "m": 60, "s": 1, "ms": 0.001, "us": 0.000001}[unit]
    return int(total)


# ---- self-test -------------------------------------------------------------------------------

# One break per line: (file, text to replace, replacement, a fragment the report must contain
# (or "re:" and a regular expression), ["every" to replace each occurrence, not the only one]). Each is applied alone to a fresh
# copy of the inputs; the unbroken copy must pass first.
BREAKS = [
    ("deploy/k8s/strangler.yaml", "readinessProbe:", "readinesProbe:", "containers.0: Additional properties are not allowed ('readinesProbe' was unexpected)"),
    ("deploy/k8s/auth.yaml", "replicas: 2", "replicas: two", "spec.replicas: 'two' is not of type 'integer'"),
    ("deploy/k8s/strangler.yaml", "apiVersion: policy/v1", "apiVersion: policy/v1beta1", "PodDisruptionBudget with apiVersion policy/v1beta1 does not exist"),
    ("deploy/k8s/routes.toml", 'target = "chat"', 'target = "caht"', r"re:deploy/k8s/routes\.toml:\d+:\d+ \(mounted at /etc/strangler/routes\.toml from ConfigMap strangler-routes\): route `chat` targets unknown upstream `caht`"),
    ("deploy/k8s/kustomization.yaml", "      - chat.graphql\n", "", "/etc/strangler/chat.graphql: No such file or directory (os error 2)\n  fix: add the file to ConfigMap strangler-routes"),
    ("deploy/k8s/strangler.yaml", "  replicas: 2", "  replicas: 1", "runs 1 replica(s) of the edge"),
    ("deploy/k8s/chat.graphql", "type Query", "type  Query", "deploy/k8s/chat.graphql: differs from docs/api/chat.graphql"),
    ("deploy/k8s/kustomization.yaml", "  - notification.yaml\n", "", "deploy/k8s/notification.yaml: not listed in kustomization.yaml"),
    ("deploy/k8s/routes.toml", 'path_prefix = "/notifications"', 'path_prefix = "/notification"', "route `notification`: match is 'path_prefix = /notification'"),
    ("deploy/k8s/routes.toml", 'url = "http://chat:4002"', 'url = "http://chat:4020"', "Service `chat` (deploy/k8s/chat.yaml) has no port 4020"),
    ("deploy/k8s/routes.toml", 'addr = "0.0.0.0:9901"', 'addr = "127.0.0.1:9901"', "the kubelet probes the pod's address"),
    ("deploy/k8s/routes.toml", "grace_period_secs = 5 ", "grace_period_secs = 25 ", "terminationGracePeriodSeconds 30 ≤ preStop 5 s + 30 s"),
    ("deploy/k8s/routes.toml", 'store = "postgres"\n', "", "inside the read-only ConfigMap mount"),
    ("deploy/k8s/strangler.yaml", "path: /readyz", "path: /ready", "readinessProbe is {'path': '/ready'"),
    ("deploy/k8s/strangler.yaml", 'exec: { command: ["sleep", "5"] }', 'exec: { command: ["true"] }', "no preStop sleep"),
    ("deploy/k8s/strangler.yaml", "  maxUnavailable: 1\n", "  minAvailable: 2\n", "needs 2 of 2 pods available"),
    ("deploy/k8s/strangler.yaml", "AlwaysAllow\n  selector:\n    matchLabels: { app: strangler }", "AlwaysAllow\n  selector:\n    matchLabels: { app: strangle }", "PodDisruptionBudget strangler selects no Deployment"),
    ("deploy/k8s/strangler.yaml", "name: STRANGLER_SHADOW_DATABASE_URL", "name: STRANGLER_SHADOW_DB_URL", "reads $STRANGLER_SHADOW_DATABASE_URL"),
    ("deploy/k8s/chat.yaml", "path: /health, port: http", "path: /healthz, port: http", "livenessProbe is {'path': '/healthz'"),
    ("deploy/k8s/notification.yaml", "targetPort: http", "targetPort: web", "targets `web`, which no container"),
    ("deploy/k8s/auth.yaml", "image: bm-auth:latest", "image: bm-authn:latest", "has no deploy/Dockerfile stage `authn`"),
    ("deploy/k8s/auth.yaml", "terminationGracePeriodSeconds: 30", "terminationGracePeriodSeconds: 5", "terminationGracePeriodSeconds 5 ≤ preStop 5 s: the kubelet kills it"),
    ("deploy/k8s/chat.yaml", "  selector:\n    matchLabels: { app: chat }\n  template:", "  selector:\n    matchLabels: { app: chat2 }\n  template:", "selector {'app': 'chat2'} does not match the pod labels"),
    ("docker-compose.yml", 'healthcheck: { test: ["CMD", "curl", "-fsS", "http://127.0.0.1:4001/ready"], interval: 5s }\n', "", "waits for `auth` to be healthy, and `auth` has no healthcheck"),
    ("docker-compose.yml", "  notification:  #", "  notifications:  #", "the compose file has no service `notification` built from target `notification`"),
    ("docker-compose.yml", "target: notification }\n    environment:", "target: notifications }\n    environment:", "builds target `notifications`, which deploy/Dockerfile does not define"),
    ("docker-compose.yml", "depends_on: [legacy, auth, chat, notification]", "depends_on: [legacy, auth, chat, notifications]", "depends on `notifications`, which is no service"),
    ("docker-compose.yml", "    stop_signal: SIGINT", "    stop_signall: SIGINT", "services.kafka: Unevaluated properties are not allowed ('stop_signall' was unexpected)"),
    ("docker-compose.yml", "./deploy/compose:", "./deploy/compose-x:", "mounts `./deploy/compose-x`, which does not exist"),
    ("docker-compose.yml", "stop_grace_period: 15s", "stop_grace_period: 10s", "Docker kills it mid-drain"),
    ("deploy/compose/chat.graphql", "type Query", "type  Query", "deploy/compose/chat.graphql: differs from docs/api/chat.graphql"),
    ("docker-compose.yml", "      - ./deploy/compose:/etc/strangler:ro\n", "      - ./deploy/compose/routes.toml:/etc/strangler/routes.toml:ro\n      - ./deploy/compose/chat.graphql:/etc/strangler/chat.graphql:ro\n", "is bind-mounted as a file"),
    ("deploy/compose/routes.toml", "mode = \"extracted\"\nfallback = true               # GETs", "mode = \"canary\"\npercent = 50\nfallback = true               # GETs", "route `notification`: mode is 'canary'"),
    ("deploy/compose/routes.toml", 'url = "http://auth:4001"', 'url = "http://auth:4011"', "service `auth` listens on 4001"),
    ("deploy/compose/routes.toml", "[[routes]]\nname = \"jwks\"", "[[routes]]\nname = \"jwks\"\nmdoe = \"x\"", r"re:deploy/compose/routes\.toml:\d+:\d+ \(mounted at /etc/strangler/routes\.toml in service `strangler`\): unknown key `mdoe`"),
    ("deploy/Dockerfile", "FROM runtime AS chat", "FROM runtime AS chat-service", "image `bm-chat:latest` has no deploy/Dockerfile stage `chat`"),
    ("scripts/dev-up", "start_bg notification env", "start_bg push env", "runs the `push` service, but no Deployment `push`"),
    ("proxy/src/admin.rs", '"/readyz"', '"/ready_z"', "no longer serves `/readyz`", "every"),
    ("extracted/common/src/health.rs", '"/ready"', '"/readiness"', "no longer serves `/ready`", "every"),
]


def self_test(root: Path, strangler: Path) -> int:
    failures = []
    with tempfile.TemporaryDirectory(prefix="check-deploy-self-test-") as tmp:
        pristine = Path(tmp) / "pristine"
        for rel in INPUTS + ["scripts/migrate", "migrations"]:
            src, dst = root / rel, pristine / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
        for rel in sorted(p.relative_to(root) for p in root.glob("extracted/*/src/main.rs")):
            (pristine / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, pristine / rel)
        clean = Checker(pristine, strangler).run()
        if clean:
            print("self-test: the unbroken copy should pass, but:\n" + "\n".join(map(str, clean)), file=sys.stderr)
            return 1
        for file, old, new, expect, *every in BREAKS:
            work = Path(tmp) / "work"
            shutil.rmtree(work, ignore_errors=True)
            shutil.copytree(pristine, work, symlinks=True)
            text = (work / file).read_text()
            if text.count(old) == 0 or (text.count(old) > 1 and not every):
                failures.append(f"{file}: the break's text {old!r} occurs {text.count(old)} times (update BREAKS)")
                continue
            (work / file).write_text(text.replace(old, new))
            report = "\n".join(map(str, Checker(work, strangler).run()))
            if not (re.search(expect[3:], report) if expect.startswith("re:") else expect in report):
                failures.append(f"{file}: {old!r} → {new!r} was not reported as {expect!r}; the report was:\n{report or '(nothing)'}")
    for f in failures:
        print(f"self-test: {f}", file=sys.stderr)
    sys.stderr.flush()
    if failures:
        print(f"check-deploy --self-test: {len(failures)} of {len(BREAKS)} breaks went unreported", file=sys.stderr)
    else:
        print(f"check-deploy --self-test: each of the {len(BREAKS)} breaks was reported")
    return 1 if failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    ap.add_argument("--strangler", type=Path, required=True, help="the strangler binary (`strangler check`)")
    ap.add_argument("--self-test", action="store_true", help="break copies of the files on purpose and expect each break reported")
    args = ap.parse_args()
    strangler = args.strangler.resolve()
    started = time.monotonic()
    if args.self_test:
        return self_test(args.root, strangler)
    problems = Checker(args.root, strangler).run()
    for p in problems:
        print(f"error: {p}", file=sys.stderr)
    if problems:
        print(f"check-deploy: {len(problems)} problem(s) in the deployment files", file=sys.stderr)
        return 1
    print(f"check-deploy: deploy/k8s (Kubernetes {', '.join(KUBERNETES_VERSIONS)}), {COMPOSE}, the Dockerfiles and both "
          f"mounted route tables are consistent ({time.monotonic() - started:.1f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
