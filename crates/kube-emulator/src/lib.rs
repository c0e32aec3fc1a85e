//! A test-only, in-memory Kubernetes API server over plain HTTP/1.1 on loopback, faithful enough
//! for kube-rs clients (typed `Api`s, `kube::runtime` watchers and reflectors, Lease-based leader
//! election, server-side apply) and for the real `kubectl` binary.
//!
//! ```no_run
//! use ambit_kube_emulator::{Emulator, EmulatorConfig};
//! let emulator = Emulator::start(EmulatorConfig::default())?;   // 127.0.0.1:<free port>
//! let uri = emulator.uri();             // kube::Client::try_from(kube::Config::new(uri))
//! emulator.write_kubeconfig("/tmp/kubeconfig")?;   // kubectl --kubeconfig /tmp/kubeconfig
//! # Ok::<(), ambit_kube_emulator::EmulatorError>(())
//! ```
//!
//! # What it does
//! - **Storage**: objects are JSON keyed by group, resource, namespace and name (stored once per
//!   group resource and served under every version of it, `apiVersion` rewritten). A global
//!   resourceVersion is stamped on every write; `uid`, `creationTimestamp` and (for deployments,
//!   CRDs and custom resources) `generation`, bumped only when something outside `metadata` and
//!   `status` changes. No-op writes do not bump the resourceVersion. A non-matching
//!   `metadata.resourceVersion` (or `uid`) on update/patch/delete gives `409 Conflict`.
//!   Failures are `Status` objects with the real reasons and codes.
//! - **Resources**: core/v1 namespaces (the four default ones exist; `kubernetes.io/metadata.name`
//!   label, `Active` phase), pods (+status; created `Pending`), services (+status; a cluster IP
//!   from 10.96.0.0/16 is allocated), endpoints, configmaps, secrets, serviceaccounts (+`token`),
//!   nodes (+status), events; events.k8s.io/v1 events; apps/v1 deployments (+status);
//!   coordination.k8s.io/v1 leases; discovery.k8s.io/v1 endpointslices;
//!   authentication.k8s.io/v1 tokenreviews (create only); apiextensions.k8s.io/v1
//!   customresourcedefinitions (+status). A created CRD is established at once: its resources
//!   are served (scope, all served versions, status subresource, short names, categories,
//!   printer columns) and listed in discovery; deleting it deletes its objects and the type.
//! - **Tokens**: TokenRequest issues opaque tokens (not JWTs) with `expirationSeconds` (default
//!   3600, minimum 600), audiences (default [`EmulatorConfig::api_audiences`]) and an optional
//!   `boundObjectRef` to a Pod or Secret. TokenReview authenticates them like the real server:
//!   username `system:serviceaccount:<ns>:<name>`, the service account uid, the service account
//!   groups, `extra` with credential id, pod name/uid and node name/uid for pod-bound tokens;
//!   expired tokens (see [`Emulator::advance_clock`]), audience mismatches, and tokens whose
//!   service account or pod was deleted are `authenticated: false` with an error.
//! - **Verbs**: get, list (label selectors `=`, `==`, `!=`, `in`, `notin`, `key`, `!key`; field
//!   selectors on `metadata.name`, `metadata.namespace` and a few per type, e.g. pods'
//!   `spec.nodeName`; `limit`/`continue`), watch (see below), create (`generateName`), update,
//!   patch (merge, JSON, strategic, apply), delete (object or `Status` response as the real
//!   server: the object for namespaces, pods, CRDs and custom resources), deletecollection.
//!   `/status` subresources change only `.status`; the main resource ignores `.status` changes.
//! - **Watch**: `watch=true|1`, resume from `resourceVersion`, `allowWatchBookmarks`
//!   (a BOOKMARK every [`EmulatorConfig::bookmark_interval`]), `timeoutSeconds`,
//!   `sendInitialEvents=true` + `resourceVersionMatch=NotOlderThan` (ends with the
//!   `k8s.io/initial-events-end` bookmark), selector transitions as ADDED/DELETED. History is
//!   bounded ([`EmulatorConfig::event_history`]); resuming from before it yields an `ERROR`
//!   event with a `410 Expired` Status. [`Emulator::expire_watch_history`] forces that.
//! - **Patch**: strategic merge patch is a merge patch except for lists that merge by key in the
//!   built-in types (containers, env, volumes, ports, conditions, volumeMounts, ownerReferences,
//!   imagePullSecrets, hostAliases; `finalizers` merge as a set) and the `$patch`, `$retainKeys`,
//!   `$deleteFromPrimitiveList` directives (`$setElementOrder` is dropped); it is refused (415)
//!   for custom resources like on the real server. Server-side apply (`fieldManager` required,
//!   `force` accepted) creates missing objects, merges the applied fields (keyed lists as above)
//!   and removes fields the same manager applied before but no longer applies; on `/status` it
//!   changes only `.status`.
//! - **Lifecycle**: `metadata.finalizers` hold a deleted object with a `deletionTimestamp` until
//!   they are removed; deleting a namespace deletes everything in it at once (no `Terminating`
//!   phase is observable); deleting an owner deletes dependents whose owners are all gone
//!   (background propagation, `Orphan` honoured).
//! - **Custom resource schemas**: unknown fields are pruned (`fieldValidation=Strict` rejects
//!   them with 400), and `type`, `enum`, `required`, `minimum`/`maximum`, `minLength`/`maxLength`,
//!   `minItems`/`maxItems` and `pattern` are validated (422 Invalid).
//! - **Discovery and kubectl**: `/api`, `/apis`, `/apis/<group>`, `/api/v1`, `/apis/<g>/<v>`
//!   (legacy format only; kubectl falls back from aggregated discovery), `/version`, `/healthz`,
//!   `/readyz`, `/livez`; `/openapi/v3` with PATCH operations that declare `fieldValidation` (so
//!   kubectl relies on server-side validation) and no schemas; `/openapi/v2` is a 404.
//!   `as=Table` requests get a `meta.k8s.io/v1` Table (Name, a few type columns, Age, or the
//!   CRD's printer columns). Protobuf request bodies are decoded for the kinds kubectl's typed
//!   `create` subcommands send that way (Namespace, ConfigMap, Secret, ServiceAccount); every
//!   response is JSON, which those clients also accept.
//! - **Verified with kubectl 1.32**: `apply -f <dir>` of CRDs (create, unchanged, configured),
//!   `apply --server-side`, `apply` of custom resources (created, configured via merge patch),
//!   `create namespace`, `create configmap`, `label` (with `--overwrite` and `key-` removal),
//!   `get <kind> -A`, `get ns --show-labels`, `get -o json|name`, `delete -f`, `delete ns`.
//!   Applying a CRD and a custom resource of it in one kubectl invocation fails, as on a real
//!   server (kubectl resolves the resource type before the CRD exists): apply the CRDs first.
//!
//! # What it does not do
//! - No TLS, no HTTP/2 (so no watch multiplexing concerns), no protobuf responses and protobuf
//!   requests only for the kinds above, no authentication or authorization (every request is
//!   admitted; TokenReview is the only authn surface), no admission control or webhooks, no
//!   API priority and fairness, no `dryRun` (rejected with 400), no `Warning` headers, no
//!   `selfLink`, no audit.
//! - No controllers: no pods scheduled or run, no endpoints or endpoint slices maintained, no
//!   deployment rollouts, no default service accounts, `kube-root-ca.crt` or `default/kubernetes`
//!   Service, no node lifecycle.
//!   Pods are deleted immediately (no graceful termination).
//! - No `managedFields`; server-side apply has no field ownership across managers and so no
//!   apply conflicts; CRD `x-kubernetes-list-type`/`-map-keys` markers are not used for merging.
//! - No schema validation of built-in types (unknown fields are kept, even with
//!   `fieldValidation=Strict`); for custom resources no CEL rules, `format`, `oneOf`/`anyOf`,
//!   defaulting, or conversion webhooks (versions share one stored object).
//! - Lists always read the latest state: `resourceVersion`/`resourceVersionMatch` on lists are
//!   ignored, and `continue` pages are not a consistent snapshot.
//! - Watches on a single object by name in the path, the legacy `/watch/` path prefix, and the
//!   aggregated discovery format are not served; no `/openapi/v2`, no OpenAPI component schemas.
//! - Subresources other than `status` and `serviceaccounts/token` (`scale`, `log`, `exec`,
//!   `eviction`, `binding`, ...) are not served.

mod api;
mod apply;
mod clock;
mod crd;
mod delete;
mod emulator;
mod error;
mod names;
mod patch;
mod protobuf;
mod resources;
mod route;
mod schema;
mod seed;
mod selector;
mod server;
mod store;
mod tokens;
mod write;

pub use emulator::{Emulator, EmulatorConfig};
pub use error::EmulatorError;
