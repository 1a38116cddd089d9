"""Pod Security Standard "restricted" (Kubernetes 1.33), rule by rule, plus Toolwarden's own pod rules.

`violations(pod_template)` returns one "rule-id: sentence" per problem. Rule ids follow the names of the
Pod Security Standards page; `toolwarden/*` ids are this chart's own requirements (read-only root
filesystem, resource limits, probes). `python3 pss.py --self-test FIXTURE` checks the checker: every
pod in the fixture names the one rule it breaks, and the checker must report exactly that rule.
"""

import sys

import yaml

BASELINE_CAPABILITIES = {
    "AUDIT_WRITE", "CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "MKNOD", "NET_BIND_SERVICE",
    "SETFCAP", "SETGID", "SETPCAP", "SETUID", "SYS_CHROOT",
}
SAFE_SYSCTLS = {
    "kernel.shm_rmid_forced", "net.ipv4.ip_local_port_range", "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies", "net.ipv4.ping_group_range", "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time", "net.ipv4.tcp_fin_timeout", "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
}
SELINUX_TYPES = {"", "container_t", "container_init_t", "container_kvm_t", "container_engine_t"}
RESTRICTED_VOLUMES = {
    "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
    "secret",
}
POD_WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "ReplicationController"}


def pod_templates(obj):
    """(name, template) for every pod template in a rendered object; template = {metadata, spec}."""
    kind = obj.get("kind")
    name = f"{kind}/{obj.get('metadata', {}).get('name')}"
    spec = obj.get("spec") or {}
    if kind == "Pod":
        return [(name, obj)]
    if kind in POD_WORKLOADS:
        return [(name, spec.get("template") or {})]
    if kind == "CronJob":
        return [(name, ((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {})]
    return []


def _containers(spec):
    for field in ("initContainers", "containers", "ephemeralContainers"):
        for c in spec.get(field) or []:
            yield field, c


def violations(template):
    meta = template.get("metadata") or {}
    spec = template.get("spec") or {}
    psc = spec.get("securityContext") or {}
    out = []

    def bad(rule, text):
        out.append(f"{rule}: {text}")

    # --- baseline ---
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            bad("host-namespaces", f"spec.{field} must be false or unset")
    if (psc.get("windowsOptions") or {}).get("hostProcess"):
        bad("host-process", "spec.securityContext.windowsOptions.hostProcess must be false or unset")
    for vol in spec.get("volumes") or []:
        if "hostPath" in vol:
            bad("host-path-volumes", f"volume {vol.get('name')} is a hostPath volume")
        kinds = [k for k in vol if k != "name"]
        if not any(k in RESTRICTED_VOLUMES for k in kinds):
            bad("volume-types", f"volume {vol.get('name')} has type {kinds}; allowed: {sorted(RESTRICTED_VOLUMES)}")
    for key, value in (meta.get("annotations") or {}).items():
        if key.startswith("container.apparmor.security.beta.kubernetes.io/"):
            if value != "runtime/default" and not str(value).startswith("localhost/"):
                bad("apparmor", f"annotation {key}={value} must be runtime/default or localhost/*")
    for sysctl in psc.get("sysctls") or []:
        if sysctl.get("name") not in SAFE_SYSCTLS:
            bad("sysctls", f"sysctl {sysctl.get('name')} is not in the safe set")

    def check_apparmor_selinux(sc, where):
        profile = (sc.get("appArmorProfile") or {}).get("type")
        if profile not in (None, "RuntimeDefault", "Localhost"):
            bad("apparmor", f"{where}.appArmorProfile.type must be RuntimeDefault or Localhost, not {profile}")
        se = sc.get("seLinuxOptions") or {}
        if se.get("type", "") not in SELINUX_TYPES:
            bad("selinux", f"{where}.seLinuxOptions.type {se.get('type')} is not allowed")
        if se.get("user") or se.get("role"):
            bad("selinux", f"{where}.seLinuxOptions.user/role must be unset")

    check_apparmor_selinux(psc, "spec.securityContext")

    # --- restricted, pod level ---
    pod_non_root = psc.get("runAsNonRoot") is True
    pod_seccomp = (psc.get("seccompProfile") or {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        bad("seccomp", f"spec.securityContext.seccompProfile.type must be RuntimeDefault or Localhost, not {pod_seccomp}")
    if psc.get("runAsUser") == 0:
        bad("running-as-non-root-user", "spec.securityContext.runAsUser must not be 0")

    containers = list(_containers(spec))
    if not containers:
        bad("containers", "the pod has no containers")
    for field, c in containers:
        where = f"{field}[{c.get('name')}]"
        sc = c.get("securityContext") or {}
        if (sc.get("windowsOptions") or {}).get("hostProcess"):
            bad("host-process", f"{where}: windowsOptions.hostProcess must be false or unset")
        if sc.get("privileged"):
            bad("privileged-containers", f"{where}: privileged must be false or unset")
        for port in c.get("ports") or []:
            if port.get("hostPort"):
                bad("host-ports", f"{where}: hostPort {port.get('hostPort')} must be unset or 0")
        check_apparmor_selinux(sc, f"{where}.securityContext")
        if sc.get("procMount", "Default") != "Default":
            bad("proc-mount", f"{where}: procMount must be Default")
        caps = sc.get("capabilities") or {}
        added = set(caps.get("add") or [])
        if added - BASELINE_CAPABILITIES:
            bad("capabilities-baseline", f"{where}: adds {sorted(added - BASELINE_CAPABILITIES)}")
        if added - {"NET_BIND_SERVICE"}:
            bad("capabilities", f"{where}: may add only NET_BIND_SERVICE, adds {sorted(added)}")
        if "ALL" not in (caps.get("drop") or []):
            bad("capabilities", f"{where}: capabilities.drop must include ALL")
        if sc.get("allowPrivilegeEscalation") is not False:
            bad("privilege-escalation", f"{where}: allowPrivilegeEscalation must be false")
        if sc.get("runAsNonRoot") is False or not (pod_non_root or sc.get("runAsNonRoot") is True):
            bad("running-as-non-root", f"{where}: runAsNonRoot must be true (pod or container)")
        if sc.get("runAsUser") == 0:
            bad("running-as-non-root-user", f"{where}: runAsUser must not be 0")
        seccomp = (sc.get("seccompProfile") or {}).get("type")
        if seccomp is not None and seccomp not in ("RuntimeDefault", "Localhost"):
            bad("seccomp", f"{where}: seccompProfile.type must be RuntimeDefault or Localhost, not {seccomp}")
        if seccomp is None and pod_seccomp is None:
            bad("seccomp", f"{where}: seccompProfile must be set (pod or container)")
        # --- Toolwarden's own rules ---
        if sc.get("readOnlyRootFilesystem") is not True:
            bad("toolwarden/read-only-root", f"{where}: readOnlyRootFilesystem must be true")
        if field == "containers":
            limits = (c.get("resources") or {}).get("limits") or {}
            if "cpu" not in limits or "memory" not in limits:
                bad("toolwarden/resources", f"{where}: resources.limits.cpu and .memory must be set")
            # A pod that runs to completion (a Job's) serves nothing to probe.
            serves = spec.get("restartPolicy", "Always") == "Always"
            if serves and (not c.get("livenessProbe") or not c.get("readinessProbe")):
                bad("toolwarden/probes", f"{where}: livenessProbe and readinessProbe must be set")
    return out


def self_test(path):
    """Every fixture pod carries annotation `pss.test/breaks: <rule>` (or `none`)."""
    with open(path) as fh:
        docs = [d for d in yaml.safe_load_all(fh) if d]
    failures = 0
    for doc in docs:
        expected = doc["metadata"]["annotations"]["pss.test/breaks"]
        rules = sorted({v.split(":", 1)[0] for _, t in pod_templates(doc) for v in violations(t)})
        want = [] if expected == "none" else [expected]
        if rules != want:
            failures += 1
            print(f"pss self-test: pod {doc['metadata']['name']} should break {want}, checker said {rules}")
    print(f"pss self-test: {len(docs) - failures} passed, {failures} failed")
    return failures == 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--self-test":
        sys.exit(0 if self_test(sys.argv[2]) else 1)
    print("usage: pss.py --self-test FIXTURE.yaml", file=sys.stderr)
    sys.exit(2)
