//! The nftables backend, through nft's JSON API (`nft -j -f -`): table `inet ambit` in each pod
//! and table `inet ambit_host` on the node. Every change is one JSON document, which nft applies
//! as one kernel transaction: all of it or none of it, never a half-written table.
//!
//! Rules are written in the exact form `nft -j list` prints them, so that [`installed`] can
//! compare what is in the kernel with what we would write, expression by expression.

use std::{net::IpAddr, path::Path};

use serde_json::{Value, json};

use crate::{
    HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, PROBE_SOURCE_V4, PROBE_SOURCE_V6, Result, ZTUNNEL_MARK,
    command::{self, Netns},
    error::Error,
};

const FAMILY: &str = "inet";
/// Our table inside each enrolled pod.
const POD_TABLE: &str = "ambit";
/// Our table on the node.
const HOST_TABLE: &str = "ambit_host";
const HOST_CHAIN: &str = "postrouting";
const PROBE_SET_V4: &str = "probe_targets_v4";
const PROBE_SET_V6: &str = "probe_targets_v6";
/// `dstnat`: where iptables' nat PREROUTING/OUTPUT sit too.
const POD_PRIORITY: i64 = -100;
/// `srcnat`.
const HOST_PRIORITY: i64 = 100;

/// A base chain and its rules (each rule an nft JSON expression list).
#[derive(Debug)]
struct Chain {
    name: &'static str,
    hook: &'static str,
    priority: i64,
    rules: Vec<Value>,
}

/// The pod's chains. NAT chains see only a connection's first packet, so replies and the rest
/// of a redirected connection follow conntrack, never these rules again.
///
/// - `output` (connections the pod opens): ztunnel's own (marked) and loopback traffic pass;
///   all other TCP goes to ztunnel's outbound listener.
/// - `prerouting` (connections arriving at the pod): loopback, the node's probe source and HBONE
///   (ztunnel's 15008 terminates it itself) pass; all other TCP goes to the plaintext listener.
fn pod_chains() -> [Chain; 2] {
    [
        Chain {
            name: "output",
            hook: "output",
            priority: POD_PRIORITY,
            rules: vec![
                rule([matches(meta("mark"), json!(ZTUNNEL_MARK)), verdict("return")]),
                rule([matches(meta("oif"), json!("lo")), verdict("return")]),
                rule([
                    matches(
                        payload("ip", "daddr"),
                        json!({"prefix": {"addr": "127.0.0.0", "len": 8}}),
                    ),
                    verdict("return"),
                ]),
                rule([matches(payload("ip6", "daddr"), json!("::1")), verdict("return")]),
                rule([
                    matches(meta("l4proto"), json!("tcp")),
                    json!({"redirect": {"port": OUTBOUND_PORT}}),
                ]),
            ],
        },
        Chain {
            name: "prerouting",
            hook: "prerouting",
            priority: POD_PRIORITY,
            rules: vec![
                rule([matches(meta("mark"), json!(ZTUNNEL_MARK)), verdict("return")]),
                rule([matches(meta("iif"), json!("lo")), verdict("return")]),
                rule([
                    matches(payload("ip", "saddr"), json!(PROBE_SOURCE_V4.to_string())),
                    verdict("return"),
                ]),
                rule([
                    matches(payload("ip6", "saddr"), json!(PROBE_SOURCE_V6.to_string())),
                    verdict("return"),
                ]),
                rule([matches(payload("tcp", "dport"), json!(HBONE_PORT)), verdict("return")]),
                rule([
                    matches(meta("l4proto"), json!("tcp")),
                    json!({"redirect": {"port": INBOUND_PLAINTEXT_PORT}}),
                ]),
            ],
        },
    ]
}

/// The node's chain: TCP the node itself opens (kubelet's probes) to an enrolled pod leaves
/// with the probe source address, which the pod lets through uncaptured. Forwarded traffic
/// (pod to pod) has a non-local source and is left alone.
fn host_chain() -> Chain {
    let snat = |family: &str, set: &str, to: String| {
        rule([
            matches(json!({"fib": {"result": "type", "flags": ["saddr"]}}), json!("local")),
            matches(payload(family, "daddr"), json!(format!("@{set}"))),
            matches(meta("l4proto"), json!("tcp")),
            json!({"snat": {"family": family, "addr": to}}),
        ])
    };
    Chain {
        name: HOST_CHAIN,
        hook: "postrouting",
        priority: HOST_PRIORITY,
        rules: vec![
            snat("ip", PROBE_SET_V4, PROBE_SOURCE_V4.to_string()),
            snat("ip6", PROBE_SET_V6, PROBE_SOURCE_V6.to_string()),
        ],
    }
}

/// The whole install as one transaction: `add` then `delete` the table (so the delete succeeds
/// whether or not it existed), then create it afresh with its chains and rules. Re-installing
/// therefore replaces rather than duplicates, and the old rules stay in force until the new
/// ones take over at commit.
pub(crate) fn install_document() -> Value {
    let table = table(POD_TABLE);
    let mut commands = vec![
        json!({"add": {"table": table}}),
        json!({"delete": {"table": table}}),
        json!({"add": {"table": table}}),
    ];
    for chain in pod_chains() {
        add_chain(&mut commands, POD_TABLE, &chain);
    }
    json!({"nftables": commands})
}

/// Deletes table `inet NAME`; the leading `add` makes it a no-op when the table is absent.
pub(crate) fn remove_document(table_name: &str) -> Value {
    let table = table(table_name);
    json!({"nftables": [{"add": {"table": table}}, {"delete": {"table": table}}]})
}

/// Creates the node table, sets and chain if missing and rewrites the chain's rules, in one
/// transaction. The sets are only `add`ed (created if absent), never flushed: re-installing
/// after an agent restart keeps every probe target in place.
pub(crate) fn host_install_document() -> Value {
    let table = table(HOST_TABLE);
    let chain = host_chain();
    let mut commands = vec![json!({"add": {"table": table}})];
    for (name, kind) in [(PROBE_SET_V4, "ipv4_addr"), (PROBE_SET_V6, "ipv6_addr")] {
        commands.push(json!({"add": {"set": {
            "family": FAMILY, "table": HOST_TABLE, "name": name, "type": kind,
        }}}));
    }
    commands.push(json!({"add": {"chain": chain_object(HOST_TABLE, &chain)}}));
    commands.push(json!({"flush": {"chain": {
        "family": FAMILY, "table": HOST_TABLE, "name": chain.name,
    }}}));
    for expr in &chain.rules {
        commands.push(add_rule(HOST_TABLE, chain.name, expr));
    }
    json!({"nftables": commands})
}

/// Adds `ip` to its probe set; with `remove`, deletes it instead. `add element` of a present
/// element is a no-op, and the removal is `add` + `delete` in one transaction, so both are
/// idempotent.
pub(crate) fn probe_target_document(ip: IpAddr, remove: bool) -> Value {
    let element = json!({
        "family": FAMILY, "table": HOST_TABLE, "name": probe_set(ip), "elem": [ip.to_string()],
    });
    let mut commands = vec![json!({"add": {"element": element}})];
    if remove {
        commands.push(json!({"delete": {"element": element}}));
    }
    json!({"nftables": commands})
}

pub(crate) fn install(netns: &Path) -> Result<()> {
    apply(Netns::At(netns), &install_document())
}

pub(crate) fn remove(netns: &Path) -> Result<()> {
    apply(Netns::At(netns), &remove_document(POD_TABLE))
}

pub(crate) fn installed(netns: &Path) -> Result<bool> {
    let ruleset = Ruleset::list(Netns::At(netns))?;
    let chains = pod_chains();
    let matches = ruleset.table_matches(POD_TABLE, &chains);
    if let Err(reason) = &matches {
        tracing::debug!(netns = %netns.display(), %reason, "nftables capture rules not in place");
    }
    Ok(matches.is_ok())
}

pub(crate) fn install_host() -> Result<()> {
    apply(Netns::Current, &host_install_document())
}

pub(crate) fn remove_host() -> Result<()> {
    apply(Netns::Current, &remove_document(HOST_TABLE))
}

pub(crate) fn add_probe_target(ip: IpAddr) -> Result<()> {
    apply(Netns::Current, &probe_target_document(ip, false))
}

pub(crate) fn remove_probe_target(ip: IpAddr) -> Result<()> {
    let result = apply(Netns::Current, &probe_target_document(ip, true));
    // Without the node table there is no set to remove the address from: nothing to do.
    if result.is_err() && !Ruleset::list(Netns::Current)?.has_table(HOST_TABLE) {
        tracing::debug!(%ip, "no node table, so the probe target is already gone");
        return Ok(());
    }
    result
}

pub(crate) fn probe_targets() -> Result<Vec<IpAddr>> {
    Ruleset::list(Netns::Current)?.probe_targets()
}

fn apply(netns: Netns<'_>, document: &Value) -> Result<()> {
    command::run(netns, "nft", &["-j", "-f", "-"], Some(&document.to_string())).map(drop)
}

/// The `inet` part of a namespace's ruleset, as `nft -j list ruleset inet` prints it.
struct Ruleset {
    objects: Vec<Value>,
    netns: String,
}

const LIST_ARGS: [&str; 4] = ["-j", "list", "ruleset", FAMILY];

impl Ruleset {
    fn list(netns: Netns<'_>) -> Result<Ruleset> {
        let out = command::run(netns, "nft", &LIST_ARGS, None)?;
        let invalid = |reason: String| Error::Output {
            netns: netns.to_string(),
            command: format!("nft {}", LIST_ARGS.join(" ")),
            reason,
        };
        let mut document: Value = serde_json::from_str(&out).map_err(|e| invalid(format!("not JSON: {e}")))?;
        let objects = match document.get_mut("nftables").map(Value::take) {
            Some(Value::Array(objects)) => objects,
            _ => return Err(invalid("no \"nftables\" array".to_owned())),
        };
        Ok(Ruleset {
            objects,
            netns: netns.to_string(),
        })
    }

    /// Objects of one kind (`table`, `chain`, `rule`, `set`) in our family and `table`.
    fn in_table<'a>(&'a self, kind: &'a str, table: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
        let table_key = if kind == "table" { "name" } else { "table" };
        self.objects
            .iter()
            .filter_map(move |object| object.get(kind))
            .filter(move |o| o["family"] == FAMILY && o[table_key] == table)
    }

    fn has_table(&self, table: &str) -> bool {
        self.in_table("table", table).next().is_some()
    }

    /// `Ok` when `table` holds exactly `chains` (hooks, priorities and rules in order) and
    /// nothing else; otherwise what differs.
    fn table_matches(&self, table: &str, chains: &[Chain]) -> Result<(), String> {
        if !self.has_table(table) {
            return Err(format!("no table {FAMILY} {table}"));
        }
        if let Some(other) = ["set", "map", "flowtable", "counter", "quota"]
            .iter()
            .find(|kind| self.in_table(kind, table).next().is_some())
        {
            return Err(format!("unexpected {other} in table {table}"));
        }
        let present: Vec<&Value> = self.in_table("chain", table).collect();
        if present.len() != chains.len() {
            return Err(format!("{} chains instead of {}", present.len(), chains.len()));
        }
        for chain in chains {
            let Some(found) = present.iter().find(|c| c["name"] == chain.name) else {
                return Err(format!("no chain {}", chain.name));
            };
            let expected = chain_object(table, chain);
            for key in ["type", "hook", "prio", "policy"] {
                if found[key] != expected[key] {
                    return Err(format!(
                        "chain {} has {key} {} instead of {}",
                        chain.name, found[key], expected[key]
                    ));
                }
            }
            let rules: Vec<&Value> = self
                .in_table("rule", table)
                .filter(|r| r["chain"] == chain.name)
                .map(|r| &r["expr"])
                .collect();
            if rules.len() != chain.rules.len() || rules.iter().zip(&chain.rules).any(|(a, b)| *a != b) {
                return Err(format!(
                    "chain {} holds {} rules that differ from the {} expected",
                    chain.name,
                    rules.len(),
                    chain.rules.len()
                ));
            }
        }
        Ok(())
    }

    fn probe_targets(&self) -> Result<Vec<IpAddr>> {
        let mut targets = Vec::new();
        for set in self.in_table("set", HOST_TABLE) {
            if set["name"] != PROBE_SET_V4 && set["name"] != PROBE_SET_V6 {
                continue;
            }
            let elements = match set.get("elem") {
                None => continue,
                Some(Value::Array(elements)) => elements,
                Some(other) => return Err(self.unexpected(format!("set elements {other}"))),
            };
            for element in elements {
                let ip = element
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .ok_or_else(|| self.unexpected(format!("set element {element}")))?;
                targets.push(ip);
            }
        }
        Ok(targets)
    }

    fn unexpected(&self, what: String) -> Error {
        Error::Output {
            netns: self.netns.clone(),
            command: format!("nft {}", LIST_ARGS.join(" ")),
            reason: format!("unexpected {what} in table {HOST_TABLE}"),
        }
    }
}

fn probe_set(ip: IpAddr) -> &'static str {
    match ip {
        IpAddr::V4(_) => PROBE_SET_V4,
        IpAddr::V6(_) => PROBE_SET_V6,
    }
}

fn table(name: &str) -> Value {
    json!({"family": FAMILY, "name": name})
}

fn chain_object(table: &str, chain: &Chain) -> Value {
    json!({
        "family": FAMILY, "table": table, "name": chain.name,
        "type": "nat", "hook": chain.hook, "prio": chain.priority, "policy": "accept",
    })
}

fn add_chain(commands: &mut Vec<Value>, table: &str, chain: &Chain) {
    commands.push(json!({"add": {"chain": chain_object(table, chain)}}));
    for expr in &chain.rules {
        commands.push(add_rule(table, chain.name, expr));
    }
}

fn add_rule(table: &str, chain: &str, expr: &Value) -> Value {
    json!({"add": {"rule": {"family": FAMILY, "table": table, "chain": chain, "expr": expr}}})
}

fn rule<const N: usize>(statements: [Value; N]) -> Value {
    Value::Array(statements.into())
}

fn matches(left: Value, right: Value) -> Value {
    json!({"match": {"op": "==", "left": left, "right": right}})
}

fn meta(key: &str) -> Value {
    json!({"meta": {"key": key}})
}

fn payload(protocol: &str, field: &str) -> Value {
    json!({"payload": {"protocol": protocol, "field": field}})
}

fn verdict(name: &str) -> Value {
    json!({ name: null })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commands(document: &Value) -> &[Value] {
        document["nftables"].as_array().expect("an nftables array")
    }

    /// The `add` commands of `document` as `nft -j list` would print the result.
    fn listed(document: &Value) -> Ruleset {
        let objects = commands(document)
            .iter()
            .filter_map(|c| c.get("add"))
            .filter_map(Value::as_object)
            .map(|o| Value::Object(o.clone()))
            .collect();
        Ruleset {
            objects,
            netns: "test".to_owned(),
        }
    }

    fn rules_of<'a>(document: &'a Value, chain: &str) -> Vec<&'a Value> {
        commands(document)
            .iter()
            .filter_map(|c| c["add"].get("rule"))
            .filter(|r| r["chain"] == chain)
            .map(|r| &r["expr"])
            .collect()
    }

    #[test]
    fn install_replaces_the_table_in_one_document() {
        let document = install_document();
        let commands = commands(&document);
        let table = json!({"family": "inet", "name": "ambit"});
        assert_eq!(commands[0], json!({"add": {"table": table}}));
        assert_eq!(commands[1], json!({"delete": {"table": table}}));
        assert_eq!(commands[2], json!({"add": {"table": table}}));
        assert_eq!(
            commands.iter().filter(|c| c.get("delete").is_some()).count(),
            1,
            "only the table is deleted"
        );
        for hook in ["output", "prerouting"] {
            let chain = commands
                .iter()
                .find_map(|c| c["add"].get("chain").filter(|c| c["name"] == hook))
                .expect("chain present");
            assert_eq!(chain["type"], "nat");
            assert_eq!(chain["hook"], hook);
            assert_eq!(chain["prio"], -100);
            assert_eq!(chain["policy"], "accept");
        }
    }

    /// `[left == right, return]`, written out literally.
    fn returns_when(left: Value, right: Value) -> Value {
        json!([{"match": {"op": "==", "left": left, "right": right}}, {"return": null}])
    }

    fn redirects_tcp_to(port: u16) -> Value {
        json!([
            {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
            {"redirect": {"port": port}}
        ])
    }

    #[test]
    fn output_exempts_ztunnel_and_loopback_then_redirects_tcp_to_15001() {
        let document = install_document();
        let rules: Vec<Value> = rules_of(&document, "output").into_iter().cloned().collect();
        assert_eq!(
            rules,
            vec![
                returns_when(json!({"meta": {"key": "mark"}}), json!(0x539)),
                returns_when(json!({"meta": {"key": "oif"}}), json!("lo")),
                returns_when(
                    json!({"payload": {"protocol": "ip", "field": "daddr"}}),
                    json!({"prefix": {"addr": "127.0.0.0", "len": 8}})
                ),
                returns_when(json!({"payload": {"protocol": "ip6", "field": "daddr"}}), json!("::1")),
                redirects_tcp_to(15001),
            ]
        );
    }

    #[test]
    fn prerouting_exempts_loopback_probes_and_hbone_then_redirects_tcp_to_15006() {
        let document = install_document();
        let rules: Vec<Value> = rules_of(&document, "prerouting").into_iter().cloned().collect();
        assert_eq!(
            rules,
            vec![
                returns_when(json!({"meta": {"key": "mark"}}), json!(0x539)),
                returns_when(json!({"meta": {"key": "iif"}}), json!("lo")),
                returns_when(
                    json!({"payload": {"protocol": "ip", "field": "saddr"}}),
                    json!("169.254.7.127")
                ),
                returns_when(
                    json!({"payload": {"protocol": "ip6", "field": "saddr"}}),
                    json!("fd16:9254:7127:1337:ffff:ffff:ffff:ffff")
                ),
                returns_when(json!({"payload": {"protocol": "tcp", "field": "dport"}}), json!(15008)),
                redirects_tcp_to(15006),
            ]
        );
    }

    #[test]
    fn host_rules_snat_local_tcp_to_probe_targets_and_keep_the_sets() {
        let document = host_install_document();
        let commands = commands(&document);
        assert!(
            !commands
                .iter()
                .any(|c| c.get("delete").is_some() || c["flush"].get("set").is_some()),
            "re-installing must not drop probe targets"
        );
        assert!(commands.iter().any(|c| c["flush"]["chain"]["name"] == "postrouting"));
        let sets: Vec<(&Value, &Value)> = commands
            .iter()
            .filter_map(|c| c["add"].get("set"))
            .map(|s| (&s["name"], &s["type"]))
            .collect();
        assert_eq!(
            sets,
            [
                (&json!("probe_targets_v4"), &json!("ipv4_addr")),
                (&json!("probe_targets_v6"), &json!("ipv6_addr"))
            ]
        );
        let chain = commands.iter().find_map(|c| c["add"].get("chain")).expect("a chain");
        assert_eq!(
            (&chain["type"], &chain["hook"], &chain["prio"]),
            (&json!("nat"), &json!("postrouting"), &json!(100))
        );
        let rules: Vec<Value> = rules_of(&document, "postrouting").into_iter().cloned().collect();
        let snat = |family: &str, set: &str, to: &str| {
            json!([
                {"match": {"op": "==", "left": {"fib": {"result": "type", "flags": ["saddr"]}}, "right": "local"}},
                {"match": {"op": "==", "left": {"payload": {"protocol": family, "field": "daddr"}}, "right": set}},
                {"match": {"op": "==", "left": {"meta": {"key": "l4proto"}}, "right": "tcp"}},
                {"snat": {"family": family, "addr": to}}
            ])
        };
        assert_eq!(
            rules,
            vec![
                snat("ip", "@probe_targets_v4", "169.254.7.127"),
                snat("ip6", "@probe_targets_v6", "fd16:9254:7127:1337:ffff:ffff:ffff:ffff"),
            ]
        );
    }

    #[test]
    fn probe_target_removal_is_add_then_delete() {
        let ip: IpAddr = "fd00::7".parse().expect("an address");
        let document = probe_target_document(ip, true);
        let commands = commands(&document);
        assert_eq!(commands.len(), 2);
        assert_eq!(commands[0]["add"]["element"]["name"], "probe_targets_v6");
        assert_eq!(commands[0]["add"]["element"]["elem"], json!(["fd00::7"]));
        assert_eq!(commands[1]["delete"], commands[0]["add"]);
        let added = probe_target_document("10.0.0.1".parse().expect("an address"), false);
        assert_eq!(commands_len(&added), 1);
        assert_eq!(added["nftables"][0]["add"]["element"]["name"], "probe_targets_v4");
    }

    fn commands_len(document: &Value) -> usize {
        commands(document).len()
    }

    #[test]
    fn the_check_wants_exactly_our_table() {
        let document = install_document();
        let chains = pod_chains();
        assert_eq!(listed(&document).table_matches(POD_TABLE, &chains), Ok(()));

        let mut missing_rule = listed(&document);
        let last_rule = missing_rule
            .objects
            .iter()
            .rposition(|o| o.get("rule").is_some())
            .expect("rules");
        missing_rule.objects.remove(last_rule);
        assert!(missing_rule.table_matches(POD_TABLE, &chains).is_err());

        let mut duplicated = listed(&document);
        let copy = duplicated.objects[last_rule].clone();
        duplicated.objects.push(copy);
        assert!(duplicated.table_matches(POD_TABLE, &chains).is_err());

        let empty = listed(&json!({"nftables": []}));
        assert_eq!(
            empty.table_matches(POD_TABLE, &chains),
            Err("no table inet ambit".to_owned())
        );
    }

    #[test]
    fn probe_targets_are_read_from_both_sets() {
        let ruleset = Ruleset {
            objects: vec![
                json!({"set": {"family": "inet", "table": "ambit_host", "name": "probe_targets_v4",
                                "type": "ipv4_addr", "elem": ["10.0.0.1", "10.0.0.2"]}}),
                json!({"set": {"family": "inet", "table": "ambit_host", "name": "probe_targets_v6",
                                "type": "ipv6_addr"}}),
                json!({"set": {"family": "inet", "table": "other", "name": "probe_targets_v4",
                                "type": "ipv4_addr", "elem": ["10.9.9.9"]}}),
            ],
            netns: "test".to_owned(),
        };
        let expected: Vec<IpAddr> = vec!["10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip")];
        assert_eq!(ruleset.probe_targets().expect("parses"), expected);
    }
}
