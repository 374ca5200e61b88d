// Offline checks of meshcap's Kubernetes manifests (deploy/kubernetes).
//
// Run by scripts/validate-manifests.sh, from a copy in
// build/tools/k8s-validate, next to the packages it imports. For every
// directory under deploy/kubernetes that holds a kustomization.yaml, it
// renders the kustomization (`kubectl kustomize`, or a small built-in
// renderer when kubectl is absent) and checks each object four ways:
//
//   1. schema: the JSON schema of the object's kind, generated from
//      Kubernetes' own OpenAPI document (kubernetes-models; the
//      ServiceMonitor's from the Prometheus Operator's CRD): types, formats,
//      enums, required fields;
//   2. fields: every field name, at any depth, exists in that kind (the
//      OpenAPI schemas do not forbid unknown fields; the API server drops
//      or rejects them): each object is walked alongside its kind's
//      TypeScript interface from the same models, resolved by the
//      TypeScript compiler;
//   3. API-server rules that no schema expresses (selector matches the pod
//      template, mounts name existing volumes, Bidirectional propagation
//      only in privileged containers, names of ports, ...) and references
//      between the objects (Service -> pods, ServiceMonitor -> Service,
//      ConfigMap volumes -> ConfigMaps);
//   4. meshcap's own: the agent's flags, the mounts it needs, the metrics
//      port in its four places, and the CNI plugin's settings (keys are
//      istio-iptables' long flag names, read from model/istio_flags.cpp,
//      plus meshcap's own).
//
// Then a self-test: known mistakes are planted in copies of the rendered
// objects, and each must be caught by the check meant to catch it.
//
// Usage: node validate.mjs --root REPO [--kubectl PATH|none] [DIR...]
// Exit code 0 when every kustomization passes, 1 otherwise, 2 on bad usage.

import { spawnSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import YAML from "yaml";
import ts from "typescript";

const here = path.dirname(fileURLToPath(import.meta.url));

// ---------------------------------------------------------------- arguments

function usage(msg) {
  console.error(`validate.mjs: ${msg}`);
  console.error("usage: node validate.mjs --root REPO [--kubectl PATH|none] [KUSTOMIZATION_DIR...]");
  process.exit(2);
}

const opts = { root: null, kubectl: "kubectl", dirs: [] };
for (let i = 2; i < process.argv.length; i++) {
  const a = process.argv[i];
  if (a === "--root") opts.root = process.argv[++i];
  else if (a === "--kubectl") opts.kubectl = process.argv[++i];
  else if (a.startsWith("--")) usage(`unknown option ${a}`);
  else opts.dirs.push(a);
}
if (!opts.root) usage("--root is required");
opts.root = path.resolve(opts.root);
const deployDir = path.join(opts.root, "deploy", "kubernetes");

// ---------------------------------------------------------------- helpers

const isObj = (v) => v !== null && typeof v === "object" && !Array.isArray(v);
const rel = (p) => path.relative(opts.root, p) || ".";
const label = (o) => `${o?.kind ?? "?"}/${o?.metadata?.name ?? "?"}`;

// Every kustomization under deploy/kubernetes, parents before children.
function findKustomizations(dir) {
  const out = [];
  const walk = (d) => {
    if (["kustomization.yaml", "kustomization.yml", "Kustomization"].some((f) => fs.existsSync(path.join(d, f))))
      out.push(d);
    for (const e of fs.readdirSync(d, { withFileTypes: true }))
      if (e.isDirectory() && e.name !== "node_modules" && !e.name.startsWith(".")) walk(path.join(d, e.name));
  };
  walk(dir);
  return out;
}

function kustomizationFile(dir) {
  for (const f of ["kustomization.yaml", "kustomization.yml", "Kustomization"])
    if (fs.existsSync(path.join(dir, f))) return path.join(dir, f);
  throw new Error(`${rel(dir)}: no kustomization file`);
}

// YAML text -> plain objects; duplicate keys and syntax errors are errors.
function parseYaml(text, where) {
  const docs = YAML.parseAllDocuments(text, { uniqueKeys: true, prettyErrors: true });
  const out = [];
  for (const d of docs) {
    if (d.errors.length) throw new Error(`${where}: ${d.errors.map((e) => e.message).join("; ")}`);
    const v = d.toJS();
    if (v !== null && v !== undefined) out.push(v);
  }
  return out;
}

// ---------------------------------------------------------------- rendering

function kubectlVersion() {
  if (opts.kubectl === "none") return null;
  const r = spawnSync(opts.kubectl, ["version", "--client"], { encoding: "utf8", timeout: 60000 });
  if (r.error || r.status !== 0) return null;
  return r.stdout.trim().split("\n").join(", ");
}

function renderWithKubectl(dir) {
  const r = spawnSync(opts.kubectl, ["kustomize", dir], { encoding: "utf8", timeout: 120000, maxBuffer: 64 << 20 });
  if (r.error) throw new Error(`kubectl kustomize ${rel(dir)}: ${r.error.message}`);
  if (r.status !== 0) throw new Error(`kubectl kustomize ${rel(dir)} failed: ${r.stderr.trim()}`);
  return parseYaml(r.stdout, `kubectl kustomize ${rel(dir)}`);
}

// A fallback for machines without kubectl: resources (files and
// directories), configMapGenerator (files and literals, no name hash),
// namespace, images. Patches are not applied (said so in the report).
function renderBuiltin(dir, notes) {
  const k = parseYaml(fs.readFileSync(kustomizationFile(dir), "utf8"), rel(kustomizationFile(dir)))[0] ?? {};
  let objs = [];
  for (const r of k.resources ?? []) {
    const p = path.resolve(dir, r);
    if (fs.statSync(p).isDirectory()) objs.push(...renderBuiltin(p, notes));
    else objs.push(...parseYaml(fs.readFileSync(p, "utf8"), rel(p)));
  }
  for (const g of k.configMapGenerator ?? []) {
    const data = {};
    for (const f of g.files ?? []) {
      const [key, file] = f.includes("=") ? f.split("=", 2) : [path.basename(f), f];
      data[key] = fs.readFileSync(path.resolve(dir, file), "utf8");
    }
    for (const l of g.literals ?? []) {
      const i = l.indexOf("=");
      data[l.slice(0, i)] = l.slice(i + 1);
    }
    objs.push({ apiVersion: "v1", kind: "ConfigMap", metadata: { name: g.name }, data });
  }
  if ((k.patches ?? []).length || (k.patchesStrategicMerge ?? []).length || (k.patchesJson6902 ?? []).length)
    notes.push(`${rel(dir)}: patches NOT applied (no kubectl to render them)`);
  if (k.namespace)
    for (const o of objs) if (o.kind !== "Namespace") (o.metadata ??= {}).namespace = k.namespace;
  for (const im of k.images ?? [])
    for (const o of objs)
      for (const c of podSpecOf(o)?.containers ?? [])
        if (c.image?.split(":")[0] === im.name)
          c.image = `${im.newName ?? im.name}:${im.newTag ?? c.image.split(":")[1] ?? "latest"}`;
  return objs;
}

// ---------------------------------------------------------------- 1. schema

// apiVersion + kind -> [module, interface name].
function modelOf(o) {
  const kind = o.kind;
  const av = String(o.apiVersion ?? "");
  if (!/^[A-Z][A-Za-z0-9]*$/.test(kind ?? "")) return null;
  if (av === "monitoring.coreos.com/v1")
    return [`@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/${kind}`, `I${kind}`];
  if (!/^([a-z0-9.-]+\/)?v[0-9]+((alpha|beta)[0-9]+)?$/.test(av)) return null;
  return [`kubernetes-models/${av}/${kind}`, `I${kind}`];
}

async function loadModel(o) {
  const m = modelOf(o);
  if (!m) return null;
  const file = path.join(here, "node_modules", ...m[0].split("/")) + ".js";
  if (!fs.existsSync(file)) return null;
  const mod = await import(pathToFileURL(file).href);
  return { cls: mod[o.kind], module: m[0], iface: m[1] };
}

async function schemaErrors(o) {
  const m = await loadModel(o);
  if (!m || typeof m.cls !== "function")
    return [`kind ${o.apiVersion}/${o.kind} is not one the validator knows (no schema)`];
  try {
    new m.cls(structuredClone(o)).validate();
    return [];
  } catch (e) {
    if (Array.isArray(e.errors))
      return e.errors.map((x) => `${x.instancePath || "/"}: ${x.message}${x.params ? " " + JSON.stringify(x.params) : ""}`);
    return [String(e.message ?? e)];
  }
}

// ---------------------------------------------------------------- 2. fields

// Resolves each object's kind to its TypeScript interface (one compiler
// run for all), then walks the object alongside that type: a key the type
// does not have, at any depth, is an unknown field. Returns the findings
// per object index. (Wrong types are the schema check's business.)
async function fieldErrors(objs) {
  const work = path.join(here, ".check");
  fs.mkdirSync(work, { recursive: true });
  const file = path.join(work, "kinds.mts");
  const models = [...new Set(objs.map((o) => modelOf(o)).filter(Boolean).map((m) => m.join(" ")))].map((x) => x.split(" "));
  const lines = models.flatMap(([mod, iface], i) => [
    `import type * as T${i} from "${mod}";`,
    `export type K${i} = T${i}.${iface};`,
  ]);
  fs.writeFileSync(file, lines.join("\n") + "\n");
  const program = ts.createProgram([file], {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    skipLibCheck: true,
    types: [],
  });
  const diags = ts.getPreEmitDiagnostics(program);
  if (diags.length)
    throw new Error(`type-check setup: ${diags.map((d) => ts.flattenDiagnosticMessageText(d.messageText, " ")).join("; ")}`);
  const checker = program.getTypeChecker();
  const source = program.getSourceFile(file);
  const types = new Map();
  for (const st of source.statements)
    if (ts.isTypeAliasDeclaration(st)) types.set(st.name.text, [checker.getTypeAtLocation(st.name), st]);

  return objs.map((o) => {
    const m = modelOf(o);
    const i = models.findIndex(([mod, iface]) => m && mod === m[0] && iface === m[1]);
    if (i < 0) return [];
    const [type, where] = types.get(`K${i}`);
    const out = [];
    walkFields(checker, where, o, type, "", out);
    return out;
  });
}

// Object types a value may take, once undefined and null are set aside.
function objectMembers(type) {
  const parts = type.isUnion() ? type.types : [type];
  return parts.filter((t) => t.flags & ts.TypeFlags.Object || t.isIntersection());
}

function walkFields(checker, where, value, type, at, out) {
  if (type.flags & (ts.TypeFlags.Any | ts.TypeFlags.Unknown)) return;
  if (Array.isArray(value)) {
    for (const t of objectMembers(type)) {
      const elem = t.getNumberIndexType();
      if (elem) value.forEach((v, i) => walkFields(checker, where, v, elem, `${at}[${i}]`, out));
    }
    return;
  }
  if (!isObj(value)) return;
  const members = objectMembers(type).filter((t) => !t.getNumberIndexType() || t.getProperties().length);
  if (!members.length) return;
  // With several object types to choose from, the one that fits best.
  let best = null;
  for (const t of members) {
    const found = [];
    for (const [k, v] of Object.entries(value)) {
      const prop = t.getProperty(k);
      const sub = prop ? checker.getTypeOfSymbolAtLocation(prop, where) : t.getStringIndexType();
      if (!sub) found.push(`${at ? at + "." : ""}${k}: no such field`);
      else walkFields(checker, where, v, checker.getNonNullableType(sub), `${at ? at + "." : ""}${k}`, found);
    }
    if (!best || found.length < best.length) best = found;
  }
  out.push(...best);
}

// ---------------------------------------------------------------- 3. rules

function podSpecOf(o) {
  if (o?.kind === "Pod") return o.spec;
  if (["DaemonSet", "Deployment", "StatefulSet", "ReplicaSet", "Job"].includes(o?.kind)) return o.spec?.template?.spec;
  if (o?.kind === "CronJob") return o.spec?.jobTemplate?.spec?.template?.spec;
  return null;
}
function podLabelsOf(o) {
  return o.kind === "Pod" ? o.metadata?.labels ?? {} : o.spec?.template?.metadata?.labels ?? {};
}
const matches = (selector, labels) =>
  isObj(selector) && Object.keys(selector).length > 0 && Object.entries(selector).every(([k, v]) => labels?.[k] === v);

const DNS1123_LABEL = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/;
function svcNameError(n) {
  // IANA_SVC_NAME, as the API server checks port names.
  if (typeof n !== "string" || n.length === 0 || n.length > 15) return "must be 1 to 15 characters";
  if (!/^[a-z0-9-]+$/.test(n)) return "must be lowercase letters, digits and '-'";
  if (!/[a-z]/.test(n)) return "must contain a letter";
  if (n.startsWith("-") || n.endsWith("-") || n.includes("--")) return "must not begin or end with '-' or hold '--'";
  return null;
}

function probePorts(c) {
  const out = [];
  for (const p of ["startupProbe", "readinessProbe", "livenessProbe"]) {
    const pr = c[p];
    if (!isObj(pr)) continue;
    for (const h of ["httpGet", "tcpSocket", "grpc"]) if (isObj(pr[h])) out.push([p, pr[h].port]);
  }
  return out;
}

function ruleErrors(objs) {
  const errs = objs.map(() => []);
  const namespaces = new Set(objs.filter((o) => o.kind === "Namespace").map((o) => o.metadata?.name));
  const clusterScoped = new Set(["Namespace", "ClusterRole", "ClusterRoleBinding", "PriorityClass", "CustomResourceDefinition"]);
  const seen = new Map();

  objs.forEach((o, i) => {
    const e = errs[i];
    const name = o.metadata?.name;
    if (typeof name !== "string" || !/^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$/.test(name) || name.length > 253)
      e.push(`metadata.name ${JSON.stringify(name)} is not a DNS-1123 subdomain`);
    const key = `${o.apiVersion}/${o.kind}/${o.metadata?.namespace ?? ""}/${name}`;
    if (seen.has(key)) e.push(`a second object with the same kind, namespace and name`);
    seen.set(key, i);
    if (!clusterScoped.has(o.kind)) {
      const ns = o.metadata?.namespace;
      if (!ns) e.push("no metadata.namespace: it would land in whatever namespace kubectl points at");
      else if (namespaces.size && !namespaces.has(ns)) e.push(`namespace ${ns} is not created by these manifests`);
    }

    const spec = podSpecOf(o);
    if (spec) {
      const tmplLabels = podLabelsOf(o);
      if (o.kind !== "Pod") {
        const sel = o.spec?.selector;
        if (!isObj(sel?.matchLabels) || !matches(sel.matchLabels, tmplLabels))
          e.push("spec.selector.matchLabels does not match spec.template.metadata.labels (the API server refuses this)");
      }
      const volumes = new Map();
      for (const v of spec.volumes ?? []) {
        if (volumes.has(v.name)) e.push(`volume ${v.name} is defined twice`);
        if (!DNS1123_LABEL.test(v.name ?? "")) e.push(`volume name ${JSON.stringify(v.name)} is not a DNS-1123 label`);
        volumes.set(v.name, v);
        if (v.hostPath && !String(v.hostPath.path ?? "").startsWith("/"))
          e.push(`volume ${v.name}: hostPath.path must be absolute`);
        if (v.configMap) {
          const cm = objs.find(
            (x) => x.kind === "ConfigMap" && x.metadata?.name === v.configMap.name && x.metadata?.namespace === o.metadata?.namespace,
          );
          if (!cm && !v.configMap.optional) e.push(`volume ${v.name}: ConfigMap ${v.configMap.name} is not in these manifests`);
        }
      }
      const portNames = new Set();
      for (const c of [...(spec.initContainers ?? []), ...(spec.containers ?? [])]) {
        const where = `container ${c.name}`;
        if (!DNS1123_LABEL.test(c.name ?? "")) e.push(`${where}: name is not a DNS-1123 label`);
        const mountPaths = new Set();
        for (const m of c.volumeMounts ?? []) {
          if (!volumes.has(m.name)) e.push(`${where}: volumeMount ${m.name} names no volume`);
          if (mountPaths.has(m.mountPath)) e.push(`${where}: mountPath ${m.mountPath} is used twice`);
          mountPaths.add(m.mountPath);
          if (m.mountPropagation === "Bidirectional" && c.securityContext?.privileged !== true)
            e.push(`${where}: Bidirectional mount propagation (${m.mountPath}) is allowed only in privileged containers`);
        }
        const ownPorts = new Set();
        for (const p of c.ports ?? []) {
          if (p.name !== undefined) {
            const bad = svcNameError(p.name);
            if (bad) e.push(`${where}: port name ${JSON.stringify(p.name)} ${bad}`);
            if (portNames.has(p.name)) e.push(`${where}: port name ${p.name} is used twice in the pod`);
            portNames.add(p.name);
            ownPorts.add(p.name);
          }
          if (spec.hostNetwork && p.hostPort !== undefined && p.hostPort !== p.containerPort)
            e.push(`${where}: with hostNetwork, hostPort must equal containerPort (${p.hostPort} != ${p.containerPort})`);
        }
        for (const [probe, port] of probePorts(c))
          if (typeof port === "string" && !ownPorts.has(port))
            e.push(`${where}: ${probe} uses port ${port}, which the container does not name`);
      }
    }

    if (o.kind === "Service") {
      const sel = o.spec?.selector;
      const targets = objs.filter(
        (x) => podSpecOf(x) && x.metadata?.namespace === o.metadata?.namespace && matches(sel, podLabelsOf(x)),
      );
      if (sel && !targets.length) e.push("spec.selector matches no pod template in these manifests");
      for (const p of o.spec?.ports ?? []) {
        if (p.name !== undefined) {
          const bad = svcNameError(p.name);
          if (bad) e.push(`port name ${JSON.stringify(p.name)} ${bad}`);
        }
        if (typeof p.targetPort === "string")
          for (const t of targets) {
            const names = (podSpecOf(t).containers ?? []).flatMap((c) => (c.ports ?? []).map((q) => q.name));
            if (!names.includes(p.targetPort)) e.push(`targetPort ${p.targetPort} is not a port name of ${label(t)}`);
          }
      }
    }

    if (o.kind === "ServiceMonitor") {
      const sel = o.spec?.selector?.matchLabels;
      const nsSel = o.spec?.namespaceSelector;
      const inNs = (x) =>
        nsSel?.any || (nsSel?.matchNames ?? [o.metadata?.namespace]).includes(x.metadata?.namespace);
      const svcs = objs.filter((x) => x.kind === "Service" && inNs(x) && matches(sel, x.metadata?.labels ?? {}));
      if (!svcs.length) e.push("spec.selector matches no Service in these manifests");
      for (const ep of o.spec?.endpoints ?? [])
        for (const s of svcs)
          if (ep.port && !(s.spec?.ports ?? []).some((p) => p.name === ep.port))
            e.push(`endpoint port ${ep.port} is not a port name of ${label(s)}`);
    }
  });
  return errs;
}

// ---------------------------------------------------------------- 4. meshcap

// `meshcap node serve`'s flags (value-taking unless marked boolean).
const SERVE_FLAGS = {
  "--cgroup": "path",
  "--max-pods": "int",
  "--max-connections": "int",
  "--accelerate": "bool",
  "--metrics-listen": "hostport",
  "--cni-conf-dir": "path",
  "--cni-bin-dir": "path",
  "--cni-plugin-config": "path",
  "--log-level": "level",
};
const LOG_LEVELS = ["trace", "debug", "info", "warn", "error", "off"];

// istio-iptables' long flag names, as meshcap's own parser spells them.
function istioFlagNames() {
  const src = path.join(opts.root, "model", "istio_flags.cpp");
  const text = fs.readFileSync(src, "utf8");
  const names = [...text.matchAll(/\{"(?:-[A-Za-z],)?--([a-z0-9-]+)"/g)].map((m) => m[1]);
  if (names.length < 15)
    throw new Error(`${rel(src)}: found only ${names.length} istio-iptables flag names; update validate.mjs's pattern`);
  return new Set(names);
}

function pluginConfigErrors(text, istioNames) {
  let cfg;
  try {
    cfg = JSON.parse(text);
  } catch (err) {
    return [`not JSON: ${err.message}`];
  }
  if (!isObj(cfg)) return ["must be a JSON object"];
  const e = [];
  for (const [k, v] of Object.entries(cfg)) {
    if (k === "mode") {
      if (!["auto", "ebpf", "iptables"].includes(v)) e.push(`mode: ${JSON.stringify(v)} is not auto, ebpf or iptables`);
    } else if (k === "exclude-namespaces" || k === "exclude-pods") {
      if (!Array.isArray(v) || !v.every((x) => typeof x === "string" && x.length > 0))
        e.push(`${k}: must be a list of names`);
      else if (k === "exclude-namespaces")
        for (const n of v) if (!DNS1123_LABEL.test(n)) e.push(`${k}: ${JSON.stringify(n)} is not a namespace name`);
    } else if (k === "log-level") {
      if (!LOG_LEVELS.includes(v)) e.push(`log-level: ${JSON.stringify(v)} is not one of ${LOG_LEVELS.join(", ")}`);
    } else if (istioNames.has(k)) {
      const ok = typeof v === "string" || typeof v === "boolean" || (typeof v === "number" && Number.isInteger(v) && v >= 0);
      if (!ok) e.push(`${k}: must be a string, a whole number or a boolean (as on istio-iptables' command line)`);
    } else {
      e.push(`unknown key ${JSON.stringify(k)} (neither an istio-iptables long flag name nor mode, exclude-namespaces, exclude-pods, log-level)`);
    }
  }
  return e;
}

function parseFlags(args, where, e) {
  const flags = new Map();
  for (let i = 0; i < args.length; i++) {
    const a = String(args[i]);
    if (!a.startsWith("--")) {
      e.push(`${where}: unexpected argument ${JSON.stringify(a)}`);
      continue;
    }
    const eq = a.indexOf("=");
    const name = eq < 0 ? a : a.slice(0, eq);
    const kind = SERVE_FLAGS[name];
    if (!kind) {
      e.push(`${where}: ${name} is not a flag of meshcap node serve`);
      continue;
    }
    let value = true;
    if (kind !== "bool") {
      if (eq >= 0) value = a.slice(eq + 1);
      else if (i + 1 < args.length) value = String(args[++i]);
      else {
        e.push(`${where}: ${name} needs a value`);
        continue;
      }
    } else if (eq >= 0) e.push(`${where}: ${name} takes no value`);
    if (flags.has(name)) e.push(`${where}: ${name} is given twice`);
    flags.set(name, value);
    if (kind === "int" && !/^[1-9][0-9]*$/.test(value)) e.push(`${where}: ${name}: ${value} is not a positive number`);
    if (kind === "path" && !value.startsWith("/")) e.push(`${where}: ${name}: ${value} is not an absolute path`);
    if (kind === "level" && !LOG_LEVELS.includes(value)) e.push(`${where}: ${name}: ${value} is not a log level`);
    if (kind === "hostport" && !/^(\[[0-9a-fA-F:.]+\]|[0-9.]+|[A-Za-z0-9.-]+):[0-9]{1,5}$/.test(value))
      e.push(`${where}: ${name}: ${value} is not HOST:PORT`);
  }
  return flags;
}

// The mount that holds `file` inside the container, and its volume.
function mountOf(file, container, spec) {
  let best = null;
  for (const m of container.volumeMounts ?? [])
    if (file === m.mountPath || file.startsWith(m.mountPath.replace(/\/$/, "") + "/"))
      if (!best || m.mountPath.length > best.mountPath.length) best = m;
  if (!best) return null;
  return { mount: best, volume: (spec.volumes ?? []).find((v) => v.name === best.name) };
}

function meshcapErrors(objs, istioNames) {
  return objs.map((o) => {
    const e = [];
    const spec = podSpecOf(o);
    if (!spec) return e;
    for (const c of spec.containers ?? []) {
      const argv = [...(c.command ?? []), ...(c.args ?? [])].map(String);
      const at = argv.findIndex((a, i) => a === "node" && argv[i + 1] === "serve");
      if (at < 0 || !/(^|\/)meshcap$/.test(argv[at - 1] ?? "")) continue;
      const where = `container ${c.name}`;
      const flags = parseFlags(argv.slice(at + 2), where, e);

      // Host state the agent shares with the CNI plugin and the next agent.
      if (spec.hostPID !== true) e.push("hostPID must be true: pods' network namespaces and the proxy are found by PID");
      const hostMount = (p, propagation) => {
        const m = mountOf(p, c, spec);
        if (!m || m.mount.mountPath !== p || !m.volume?.hostPath)
          e.push(`${where}: ${p} must be a hostPath mount`);
        else {
          if (m.volume.hostPath.path !== p) e.push(`${where}: ${p} must be the host's ${p} (the plugin on the host uses that path)`);
          if (propagation && m.mount.mountPropagation !== propagation)
            e.push(`${where}: ${p} needs mountPropagation ${propagation}`);
        }
      };
      hostMount("/sys/fs/bpf", "Bidirectional");
      hostMount("/sys/fs/cgroup", null);
      hostMount("/run/meshcap", null);
      hostMount("/var/run/netns", "HostToContainer");

      for (const f of ["--cni-conf-dir", "--cni-bin-dir"]) {
        const v = flags.get(f);
        if (v === undefined) {
          e.push(`${where}: ${f} is missing (node serve installs the CNI plugin only when given both directories)`);
          continue;
        }
        const m = mountOf(v, c, spec);
        if (!m || !m.volume?.hostPath) e.push(`${where}: ${f} ${v} is not inside a hostPath mount`);
        else if (m.mount.readOnly) e.push(`${where}: ${f} ${v} is mounted read-only`);
      }

      // The metrics port: the flag, the container port, the probes and the
      // scrape annotation must agree.
      const listen = flags.get("--metrics-listen");
      const metricsPort = (c.ports ?? []).find((p) => p.name === "metrics");
      if (listen === undefined) e.push(`${where}: --metrics-listen is missing (probes and metrics need it)`);
      else {
        const port = Number(String(listen).split(":").pop());
        if (!metricsPort) e.push(`${where}: no container port named metrics`);
        else if (metricsPort.containerPort !== port)
          e.push(`${where}: --metrics-listen port ${port} != container port metrics ${metricsPort.containerPort}`);
        const ann = o.spec?.template?.metadata?.annotations?.["prometheus.io/port"];
        if (ann !== undefined && Number(ann) !== port) e.push(`prometheus.io/port annotation ${ann} != --metrics-listen port ${port}`);
        for (const [probe, p] of probePorts(c))
          if (p !== "metrics" && p !== port) e.push(`${where}: ${probe} port ${p} is not the metrics port`);
        for (const probe of ["readinessProbe", "livenessProbe"])
          if (!isObj(c[probe]?.httpGet) || c[probe].httpGet.path !== "/healthz")
            e.push(`${where}: ${probe} should be GET /healthz`);
      }

      // The CNI plugin's settings.
      const cfgPath = flags.get("--cni-plugin-config");
      if (cfgPath !== undefined) {
        const m = mountOf(cfgPath, c, spec);
        if (!m || !m.volume?.configMap) e.push(`${where}: --cni-plugin-config ${cfgPath} is not inside a ConfigMap mount`);
        else {
          const cm = objs.find(
            (x) => x.kind === "ConfigMap" && x.metadata?.name === m.volume.configMap.name && x.metadata?.namespace === o.metadata?.namespace,
          );
          const key = path.posix.relative(m.mount.mountPath, cfgPath);
          const text = cm?.data?.[key];
          if (cm && text === undefined) e.push(`ConfigMap ${cm.metadata.name} has no key ${key} (--cni-plugin-config)`);
          if (text !== undefined)
            for (const x of pluginConfigErrors(text, istioNames)) e.push(`ConfigMap ${cm.metadata.name} ${key}: ${x}`);
        }
      }
    }
    return e;
  });
}

// ---------------------------------------------------------------- checking

// Checks each group of objects (one kustomization's output) on its own;
// the type-check runs once over all of them.
async function check(groups, istioNames) {
  const flat = groups.flat();
  const fields = await fieldErrors(flat);
  const out = [];
  let at = 0;
  for (const objs of groups) {
    const rules = ruleErrors(objs);
    const meshcap = meshcapErrors(objs, istioNames);
    for (let i = 0; i < objs.length; i++)
      out.push({ schema: await schemaErrors(objs[i]), fields: fields[at + i], rules: rules[i], meshcap: meshcap[i] });
    at += objs.length;
  }
  return out;
}

// Known mistakes, each planted in a copy of the rendered objects; the check
// named must report it (and mention `expect`).
const MISTAKES = [
  ["schema", "a port number as a string", (o) => (pod(o).containers[0].ports[0].containerPort = "9966"), "integer"],
  ["schema", "an unknown restart policy", (o) => (pod(o).restartPolicy = "Sometimes"), "allowed values"],
  ["fields", "hostPid for hostPID", (o) => { pod(o).hostPid = true; }, "hostPid"],
  ["fields", "a misspelt volume field", (o) => { pod(o).volumes[0].hostpath = pod(o).volumes[0].hostPath; }, "hostpath"],
  ["rules", "a selector that misses the template", (o) => (o.spec.selector.matchLabels = { app: "other" }), "selector"],
  ["rules", "a mount of a volume that is not there", (o) => (pod(o).containers[0].volumeMounts[0].name = "gone"), "names no volume"],
  ["rules", "Bidirectional without privileged", (o) => (pod(o).containers[0].securityContext.privileged = false), "Bidirectional"],
  ["meshcap", "a misspelt agent flag", (o) => pod(o).containers[0].args.push("--max-pod=10"), "--max-pod"],
  ["meshcap", "the metrics port changed in one place", (o) => (pod(o).containers[0].ports[0].containerPort = 9999), "metrics"],
  ["meshcap", "an unknown plugin key", (o, all) => plugin(o, all, (c) => (c["envoy-prot"] = 15001)), "envoy-prot"],
  ["meshcap", "a bad plugin mode", (o, all) => plugin(o, all, (c) => (c.mode = "bpf")), "mode"],
];
function pod(o) {
  return podSpecOf(o);
}
function plugin(o, all, edit) {
  const c = pod(o).containers[0];
  const flag = (c.args ?? []).find((a) => String(a).startsWith("--cni-plugin-config="));
  const file = flag.split("=")[1];
  const m = mountOf(file, c, pod(o));
  const cm = all.find((x) => x.kind === "ConfigMap" && x.metadata.name === m.volume.configMap.name);
  const key = path.posix.relative(m.mount.mountPath, file);
  const cfg = JSON.parse(cm.data[key]);
  edit(cfg);
  cm.data[key] = JSON.stringify(cfg);
}

// One copy of `base` per mistake, with that mistake planted.
function plantMistakes(base) {
  const agentIdx = base.findIndex((o) => o.kind === "DaemonSet" && o.metadata?.name === "meshcap-node");
  return MISTAKES.map(([, , plant]) => {
    const copy = structuredClone(base);
    plant(copy[agentIdx], copy);
    return copy;
  });
}

// ---------------------------------------------------------------- main

async function main() {
  const targets = (opts.dirs.length ? opts.dirs.map((d) => path.resolve(opts.root, d)) : findKustomizations(deployDir)).filter(
    (d) => !d.startsWith(path.join(deployDir, "validate")),
  );
  if (!targets.length) usage(`no kustomization under ${rel(deployDir)}`);
  const kv = kubectlVersion();
  console.log(`validate-manifests: rendering with ${kv ? `kubectl kustomize (${kv})` : "the built-in renderer (no kubectl found)"}`);
  console.log(
    `validate-manifests: schemas and types from kubernetes-models ${pkgVersion("kubernetes-models")}, ` +
      `@kubernetes-models/prometheus-operator ${pkgVersion("@kubernetes-models/prometheus-operator")}; typescript ${ts.version}`,
  );
  const istioNames = istioFlagNames();

  // Render every kustomization.
  const notes = [];
  const rendered = targets.map((dir) => {
    const problems = [];
    let objs = [];
    // Every YAML source file parses, without duplicate keys (kustomize
    // keeps the last of two equal keys without a word).
    for (const f of fs.readdirSync(dir))
      if (/\.ya?ml$/.test(f))
        try {
          parseYaml(fs.readFileSync(path.join(dir, f), "utf8"), rel(path.join(dir, f)));
        } catch (err) {
          problems.push(String(err.message));
        }
    try {
      objs = kv ? renderWithKubectl(dir) : renderBuiltin(dir, notes);
    } catch (err) {
      problems.push(String(err.message));
    }
    if (!objs.length && !problems.length) problems.push("rendered no objects");
    return { dir, objs, problems };
  });

  // The self-test plants its mistakes in the first rendering that has the
  // agent serving (not the uninstall overlay's).
  const serving = rendered.find(({ objs }) =>
    objs.some((o) => o.kind === "DaemonSet" && o.metadata?.name === "meshcap-node" &&
      (podSpecOf(o)?.containers ?? []).some((c) => (c.args ?? []).includes("serve"))),
  );
  const planted = serving ? plantMistakes(serving.objs) : [];

  // Check everything in one go (one compiler run).
  const results = await check([...rendered.map((r) => r.objs), ...planted], istioNames);
  let at = 0;
  let passed = 0;
  let failed = 0;
  for (const { dir, objs, problems } of rendered) {
    objs.forEach((o, i) => {
      for (const stage of ["schema", "fields", "rules", "meshcap"])
        for (const m of results[at + i][stage]) problems.push(`${label(o)}: ${stage}: ${m}`);
    });
    at += objs.length;
    const kinds = objs.map((o) => o.kind).join(", ");
    if (problems.length) {
      failed++;
      console.log(`FAIL ${rel(dir)}: ${objs.length} objects (${kinds})`);
      for (const p of problems) console.log(`     ${p}`);
    } else {
      passed++;
      console.log(`ok   ${rel(dir)}: ${objs.length} objects (${kinds}): schema, fields, rules, meshcap`);
    }
  }

  // The checks must catch what they are for.
  if (!serving) {
    console.log("FAIL self-test: no kustomization renders the meshcap-node DaemonSet running node serve");
    failed++;
  } else {
    let ok = true;
    MISTAKES.forEach(([stage, what, , expect], n) => {
      const size = serving.objs.length;
      const found = results.slice(at + n * size, at + (n + 1) * size).flatMap((r) => r[stage]).filter((m) => m.includes(expect));
      if (!found.length) ok = false;
      console.log(`${found.length ? "ok  " : "FAIL"} self-test: ${what}${found.length ? "" : `: the ${stage} check did not report it`}`);
    });
    if (ok) passed++;
    else failed++;
  }
  for (const n of notes) console.log(`note: ${n}`);
  console.log(`${passed} passed, ${failed} failed`);
  process.exit(failed ? 1 : 0);
}

function pkgVersion(name) {
  try {
    return JSON.parse(fs.readFileSync(path.join(here, "node_modules", ...name.split("/"), "package.json"), "utf8")).version;
  } catch {
    return "?";
  }
}

main().catch((err) => {
  console.error(`validate-manifests: ${err.stack ?? err}`);
  process.exit(1);
});
