//! The iptables backend, for nodes without nft: chains of our own in the `nat` table
//! (`AMBIT_PREROUTING`, `AMBIT_OUTPUT` in pods, `AMBIT_POSTROUTING` on the node), written with
//! `iptables-restore --noflush` and, where the node has IPv6, `ip6tables-restore`.
//!
//! Atomicity: each restore script ends in one `COMMIT`, which the kernel applies at once (legacy
//! iptables replaces the whole table in one call; iptables-nft sends one nf_tables transaction).
//! Declaring `:AMBIT_X - [0:0]` flushes the chain and the same script refills it, so a
//! re-install swaps old rules for new with no uncaptured moment. IPv4 and IPv6 are two commits.
//!
//! Idempotence: the script is computed from `iptables-save -t nat` just before: the jump from a
//! built-in chain is inserted only when it is not already the one and only first rule there, and
//! removal deletes exactly the references the save shows. Writers of one namespace must not race
//! (the agent serialises per pod; the node-side functions take a process-wide lock).

use std::{
    net::IpAddr,
    path::Path,
    sync::{Mutex, MutexGuard},
};

use crate::{
    HBONE_PORT, INBOUND_PLAINTEXT_PORT, OUTBOUND_PORT, PROBE_SOURCE_V4, PROBE_SOURCE_V6, Result, ZTUNNEL_MARK,
    command::{self, Netns},
    error::Error,
};

const PREROUTING: &str = "AMBIT_PREROUTING";
const OUTPUT: &str = "AMBIT_OUTPUT";
const POSTROUTING: &str = "AMBIT_POSTROUTING";
/// The pod's chains and the built-in chain each is jumped to from.
const POD_CHAINS: [(&str, &str); 2] = [("PREROUTING", PREROUTING), ("OUTPUT", OUTPUT)];
const HOST_CHAINS: [(&str, &str); 1] = [("POSTROUTING", POSTROUTING)];

/// Serialises this process's read-modify-write cycles on the node's own tables.
static HOST_LOCK: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Family {
    V4,
    V6,
}

impl Family {
    fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    fn save(self) -> &'static str {
        match self {
            Family::V4 => "iptables-save",
            Family::V6 => "ip6tables-save",
        }
    }

    fn restore(self) -> &'static str {
        match self {
            Family::V4 => "iptables-restore",
            Family::V6 => "ip6tables-restore",
        }
    }

    fn host_prefix(self) -> u8 {
        match self {
            Family::V4 => 32,
            Family::V6 => 128,
        }
    }

    fn probe_source(self) -> IpAddr {
        match self {
            Family::V4 => PROBE_SOURCE_V4.into(),
            Family::V6 => PROBE_SOURCE_V6.into(),
        }
    }

    fn loopback(self) -> &'static str {
        match self {
            Family::V4 => "127.0.0.0/8",
            Family::V6 => "::1/128",
        }
    }
}

/// The pod's rules, spelled exactly as `iptables-save` prints them (so [`installed`] can compare
/// lines). Same meaning as the nftables backend's chains.
fn pod_rules(family: Family) -> Vec<String> {
    let probe = family.probe_source();
    let prefix = family.host_prefix();
    vec![
        format!("-A {PREROUTING} -m mark --mark {ZTUNNEL_MARK:#x} -j RETURN"),
        format!("-A {PREROUTING} -i lo -j RETURN"),
        format!("-A {PREROUTING} -s {probe}/{prefix} -j RETURN"),
        format!("-A {PREROUTING} -p tcp -m tcp --dport {HBONE_PORT} -j RETURN"),
        format!("-A {PREROUTING} -p tcp -j REDIRECT --to-ports {INBOUND_PLAINTEXT_PORT}"),
        format!("-A {OUTPUT} -m mark --mark {ZTUNNEL_MARK:#x} -j RETURN"),
        format!("-A {OUTPUT} -o lo -j RETURN"),
        format!("-A {OUTPUT} -d {} -j RETURN", family.loopback()),
        format!("-A {OUTPUT} -p tcp -j REDIRECT --to-ports {OUTBOUND_PORT}"),
    ]
}

/// The node's rule for one probe target: TCP the node itself opens to `ip` leaves from the
/// probe source address.
fn probe_rule(ip: IpAddr) -> String {
    let family = Family::of(ip);
    format!(
        "-A {POSTROUTING} -d {ip}/{} -p tcp -m addrtype --src-type LOCAL -j SNAT --to-source {}",
        family.host_prefix(),
        family.probe_source()
    )
}

/// The `nat` table as `iptables-save -t nat` shows it.
#[derive(Debug, Default)]
struct NatTable {
    chains: Vec<String>,
    /// Every `-A CHAIN …` line, in order.
    rules: Vec<String>,
}

impl NatTable {
    fn parse(saved: &str) -> NatTable {
        let mut table = NatTable::default();
        let mut in_nat = false;
        for line in saved.lines().map(str::trim) {
            if let Some(name) = line.strip_prefix('*') {
                in_nat = name == "nat";
                continue;
            }
            if !in_nat {
                continue;
            }
            if let Some(declaration) = line.strip_prefix(':') {
                let name = declaration.split_whitespace().next().unwrap_or_default();
                table.chains.push(name.to_owned());
            } else if line.starts_with("-A ") {
                table.rules.push(line.to_owned());
            }
        }
        table
    }

    fn has_chain(&self, name: &str) -> bool {
        self.chains.iter().any(|c| c == name)
    }

    fn rules_of<'a>(&'a self, chain: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.rules
            .iter()
            .filter(move |rule| rule.split_whitespace().nth(1) == Some(chain))
    }

    /// Rules outside `ours` that jump (or go) to one of `ours`.
    fn references<'a>(&'a self, ours: &'a [&str]) -> impl Iterator<Item = &'a String> + 'a {
        self.rules.iter().filter(move |rule| {
            let words: Vec<&str> = rule.split_whitespace().collect();
            words.get(1).is_some_and(|chain| !ours.contains(chain))
                && words
                    .windows(2)
                    .any(|w| (w[0] == "-j" || w[0] == "-g") && ours.contains(&w[1]))
        })
    }

    /// Script lines that leave exactly one `-j ours` as the first rule of `builtin`.
    fn fix_jump(&self, builtin: &str, ours: &str, script: &mut String) {
        let jump = format!("-A {builtin} -j {ours}");
        let copies = self.rules.iter().filter(|r| **r == jump).count();
        if copies == 1 && self.rules_of(builtin).next() == Some(&jump) {
            return;
        }
        for _ in 0..copies {
            script.push_str(&format!("-D {builtin} -j {ours}\n"));
        }
        script.push_str(&format!("-I {builtin} 1 -j {ours}\n"));
    }

    /// Why `chains` (with `rules`) are not exactly in place, if they are not.
    fn mismatch(&self, chains: &[(&str, &str)], rules: &[String]) -> Option<String> {
        for (builtin, ours) in chains {
            if !self.has_chain(ours) {
                return Some(format!("no chain {ours}"));
            }
            let jump = format!("-A {builtin} -j {ours}");
            if self.rules_of(builtin).next() != Some(&jump) || self.rules.iter().filter(|r| **r == jump).count() != 1 {
                return Some(format!("{builtin} does not start with the one jump to {ours}"));
            }
            let expected: Vec<&String> = rules
                .iter()
                .filter(|r| r.split_whitespace().nth(1) == Some(*ours))
                .collect();
            if self.rules_of(ours).collect::<Vec<_>>() != expected {
                return Some(format!("chain {ours} differs from the expected rules"));
            }
        }
        None
    }
}

/// Flushes and refills our pod chains and makes sure each is jumped to once, first.
fn install_script(family: Family, nat: &NatTable) -> String {
    let mut script = String::from("*nat\n");
    for (_, ours) in POD_CHAINS {
        script.push_str(&format!(":{ours} - [0:0]\n"));
    }
    for rule in pod_rules(family) {
        script.push_str(&rule);
        script.push('\n');
    }
    for (builtin, ours) in POD_CHAINS {
        nat.fix_jump(builtin, ours, &mut script);
    }
    script.push_str("COMMIT\n");
    script
}

/// Deletes every reference to `chains`, then the chains; `None` when none of it exists.
fn remove_script(nat: &NatTable, chains: &[(&str, &str)]) -> Option<String> {
    let ours: Vec<&str> = chains.iter().map(|(_, ours)| *ours).collect();
    let declared: Vec<&str> = ours.iter().copied().filter(|c| nat.has_chain(c)).collect();
    let references: Vec<&String> = nat.references(&ours).collect();
    if declared.is_empty() && references.is_empty() {
        return None;
    }
    let mut script = String::from("*nat\n");
    for rule in references {
        script.push_str(&format!("-D {}\n", &rule["-A ".len()..]));
    }
    for chain in declared {
        // Declaring flushes it, so the delete cannot fail on a non-empty chain.
        script.push_str(&format!(":{chain} - [0:0]\n-X {chain}\n"));
    }
    script.push_str("COMMIT\n");
    Some(script)
}

/// Creates the node chain if missing (keeping its probe targets) and fixes the jump to it.
fn host_install_script(nat: &NatTable) -> Option<String> {
    let mut script = String::new();
    if !nat.has_chain(POSTROUTING) {
        script.push_str(&format!("-N {POSTROUTING}\n"));
    }
    for (builtin, ours) in HOST_CHAINS {
        nat.fix_jump(builtin, ours, &mut script);
    }
    (!script.is_empty()).then(|| format!("*nat\n{script}COMMIT\n"))
}

pub(crate) fn install(netns: &Path) -> Result<()> {
    let netns = Netns::At(netns);
    for (family, nat) in save_all(netns)? {
        restore(netns, family, &install_script(family, &nat))?;
    }
    Ok(())
}

pub(crate) fn remove(netns: &Path) -> Result<()> {
    let netns = Netns::At(netns);
    for (family, nat) in save_all(netns)? {
        if let Some(script) = remove_script(&nat, &POD_CHAINS) {
            restore(netns, family, &script)?;
        }
    }
    Ok(())
}

pub(crate) fn installed(netns: &Path) -> Result<bool> {
    for (family, nat) in save_all(Netns::At(netns))? {
        if let Some(reason) = nat.mismatch(&POD_CHAINS, &pod_rules(family)) {
            tracing::debug!(netns = %netns.display(), ?family, %reason, "iptables capture rules not in place");
            return Ok(false);
        }
    }
    Ok(true)
}

pub(crate) fn install_host() -> Result<()> {
    let _lock = host_lock();
    for (family, nat) in save_all(Netns::Current)? {
        if let Some(script) = host_install_script(&nat) {
            restore(Netns::Current, family, &script)?;
        }
    }
    Ok(())
}

pub(crate) fn remove_host() -> Result<()> {
    let _lock = host_lock();
    for (family, nat) in save_all(Netns::Current)? {
        if let Some(script) = remove_script(&nat, &HOST_CHAINS) {
            restore(Netns::Current, family, &script)?;
        }
    }
    Ok(())
}

pub(crate) fn add_probe_target(ip: IpAddr) -> Result<()> {
    let _lock = host_lock();
    let family = Family::of(ip);
    let rule = probe_rule(ip);
    if !save(Netns::Current, family)?.rules.contains(&rule) {
        // Appended without declaring the chain, which would flush the other targets; a missing
        // chain (install_host not run) fails the restore.
        restore(Netns::Current, family, &format!("*nat\n{rule}\nCOMMIT\n"))?;
    }
    Ok(())
}

pub(crate) fn remove_probe_target(ip: IpAddr) -> Result<()> {
    let _lock = host_lock();
    let family = Family::of(ip);
    let rule = probe_rule(ip);
    let nat = match save(Netns::Current, family) {
        // Without ip6tables there can be no IPv6 target to remove.
        Err(e) if family == Family::V6 && e.is_program_missing() => return Ok(()),
        saved => saved?,
    };
    let copies = nat.rules.iter().filter(|r| **r == rule).count();
    if copies > 0 {
        let delete = format!("-D {}\n", &rule["-A ".len()..]).repeat(copies);
        restore(Netns::Current, family, &format!("*nat\n{delete}COMMIT\n"))?;
    }
    Ok(())
}

pub(crate) fn probe_targets() -> Result<Vec<IpAddr>> {
    let _lock = host_lock();
    let mut targets = Vec::new();
    for (family, nat) in save_all(Netns::Current)? {
        for rule in nat.rules_of(POSTROUTING) {
            let ip = rule
                .split_whitespace()
                .skip_while(|w| *w != "-d")
                .nth(1)
                .and_then(|d| d.split('/').next())
                .and_then(|ip| ip.parse::<IpAddr>().ok())
                .filter(|ip| probe_rule(*ip) == *rule)
                .ok_or_else(|| Error::Output {
                    netns: Netns::Current.to_string(),
                    command: format!("{} -t nat", family.save()),
                    reason: format!("unexpected rule in {POSTROUTING}: {rule}"),
                })?;
            targets.push(ip);
        }
    }
    Ok(targets)
}

fn host_lock() -> MutexGuard<'static, ()> {
    HOST_LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The `nat` table of IPv4, plus IPv6 when the kernel has it and `ip6tables-save` is
/// installed (without either, the pod has no IPv6 to capture).
fn save_all(netns: Netns<'_>) -> Result<Vec<(Family, NatTable)>> {
    let mut tables = vec![(Family::V4, save(netns, Family::V4)?)];
    if !Path::new("/proc/net/if_inet6").exists() {
        return Ok(tables);
    }
    match save(netns, Family::V6) {
        Ok(nat) => tables.push((Family::V6, nat)),
        Err(e) if e.is_program_missing() => {
            tracing::debug!("ip6tables is not installed, so IPv6 is left alone");
        }
        Err(e) => return Err(e),
    }
    Ok(tables)
}

fn save(netns: Netns<'_>, family: Family) -> Result<NatTable> {
    command::run(netns, family.save(), &["-t", "nat"], None).map(|saved| NatTable::parse(&saved))
}

fn restore(netns: Netns<'_>, family: Family, script: &str) -> Result<()> {
    command::run(netns, family.restore(), &["--wait=10", "--noflush"], Some(script)).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `iptables-save -t nat` prints for a namespace without our rules.
    const EMPTY: &str = "# Generated by iptables-save v1.8.9 (nf_tables)
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
COMMIT
";

    fn saved_after(script: &str) -> NatTable {
        // Good enough for these scripts: declarations and appended/inserted rules, in order.
        let mut nat = NatTable::parse(EMPTY);
        for line in script.lines() {
            if let Some(chain) = line.strip_prefix(':') {
                let name = chain.split_whitespace().next().expect("a name").to_owned();
                if !nat.has_chain(&name) {
                    nat.chains.push(name);
                }
            } else if let Some(rule) = line.strip_prefix("-A ") {
                nat.rules.push(format!("-A {rule}"));
            } else if let Some(rule) = line.strip_prefix("-I ") {
                let mut words = rule.split_whitespace();
                let chain = words.next().expect("a chain");
                let _position = words.next();
                let spec: Vec<&str> = words.collect();
                nat.rules.insert(0, format!("-A {chain} {}", spec.join(" ")));
            }
        }
        nat
    }

    #[test]
    fn pod_rules_name_the_ports_mark_and_exemptions() {
        let v4 = install_script(Family::V4, &NatTable::parse(EMPTY));
        for line in [
            ":AMBIT_PREROUTING - [0:0]",
            ":AMBIT_OUTPUT - [0:0]",
            "-A AMBIT_PREROUTING -m mark --mark 0x539 -j RETURN",
            "-A AMBIT_PREROUTING -i lo -j RETURN",
            "-A AMBIT_PREROUTING -s 169.254.7.127/32 -j RETURN",
            "-A AMBIT_PREROUTING -p tcp -m tcp --dport 15008 -j RETURN",
            "-A AMBIT_PREROUTING -p tcp -j REDIRECT --to-ports 15006",
            "-A AMBIT_OUTPUT -m mark --mark 0x539 -j RETURN",
            "-A AMBIT_OUTPUT -o lo -j RETURN",
            "-A AMBIT_OUTPUT -d 127.0.0.0/8 -j RETURN",
            "-A AMBIT_OUTPUT -p tcp -j REDIRECT --to-ports 15001",
            "-I PREROUTING 1 -j AMBIT_PREROUTING",
            "-I OUTPUT 1 -j AMBIT_OUTPUT",
        ] {
            assert!(v4.lines().any(|l| l == line), "missing {line:?} in\n{v4}");
        }
        assert!(v4.starts_with("*nat\n") && v4.ends_with("COMMIT\n"), "{v4}");
        assert_eq!(v4.matches("COMMIT").count(), 1, "one commit, one atomic change");

        let v6 = install_script(Family::V6, &NatTable::parse(EMPTY));
        assert!(v6.contains("-A AMBIT_PREROUTING -s fd16:9254:7127:1337:ffff:ffff:ffff:ffff/128 -j RETURN"));
        assert!(v6.contains("-A AMBIT_OUTPUT -d ::1/128 -j RETURN"));
        assert!(!v6.contains("127.0.0.0"));
    }

    #[test]
    fn redirects_come_last_in_each_chain() {
        for chain in [PREROUTING, OUTPUT] {
            let rules: Vec<String> = pod_rules(Family::V4)
                .into_iter()
                .filter(|r| r.split_whitespace().nth(1) == Some(chain))
                .collect();
            let redirect = rules.iter().position(|r| r.contains("REDIRECT")).expect("a redirect");
            assert_eq!(redirect, rules.len() - 1, "{rules:?}");
        }
    }

    #[test]
    fn reinstalling_adds_no_second_jump() {
        let first = install_script(Family::V4, &NatTable::parse(EMPTY));
        let nat = saved_after(&first);
        assert_eq!(nat.mismatch(&POD_CHAINS, &pod_rules(Family::V4)), None);
        let second = install_script(Family::V4, &nat);
        assert!(!second.contains("-I ") && !second.contains("-D "), "{second}");
        assert!(
            second.contains(":AMBIT_OUTPUT - [0:0]"),
            "the chains are still flushed and refilled"
        );
    }

    #[test]
    fn duplicate_or_displaced_jumps_are_collapsed_to_one_first() {
        let saved = "*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:AMBIT_PREROUTING - [0:0]
:AMBIT_OUTPUT - [0:0]
-A PREROUTING -j AMBIT_PREROUTING
-A PREROUTING -j AMBIT_PREROUTING
-A OUTPUT -p udp -j RETURN
-A OUTPUT -j AMBIT_OUTPUT
COMMIT
";
        let nat = NatTable::parse(saved);
        assert!(nat.mismatch(&POD_CHAINS, &pod_rules(Family::V4)).is_some());
        let script = install_script(Family::V4, &nat);
        assert_eq!(
            script.matches("-D PREROUTING -j AMBIT_PREROUTING").count(),
            2,
            "{script}"
        );
        assert_eq!(
            script.matches("-I PREROUTING 1 -j AMBIT_PREROUTING").count(),
            1,
            "{script}"
        );
        assert_eq!(script.matches("-D OUTPUT -j AMBIT_OUTPUT").count(), 1, "{script}");
        assert_eq!(script.matches("-I OUTPUT 1 -j AMBIT_OUTPUT").count(), 1, "{script}");
    }

    #[test]
    fn removal_deletes_references_then_chains_and_nothing_when_absent() {
        assert_eq!(remove_script(&NatTable::parse(EMPTY), &POD_CHAINS), None);
        let saved = "*nat
:PREROUTING ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:AMBIT_OUTPUT - [0:0]
:AMBIT_PREROUTING - [0:0]
:KEEP - [0:0]
-A PREROUTING -j AMBIT_PREROUTING
-A OUTPUT -p tcp -j AMBIT_OUTPUT
-A OUTPUT -j KEEP
-A AMBIT_OUTPUT -p tcp -j REDIRECT --to-ports 15001
COMMIT
*filter
:AMBIT_OUTPUT - [0:0]
COMMIT
";
        let script = remove_script(&NatTable::parse(saved), &POD_CHAINS).expect("something to remove");
        assert_eq!(
            script,
            "*nat
-D PREROUTING -j AMBIT_PREROUTING
-D OUTPUT -p tcp -j AMBIT_OUTPUT
:AMBIT_PREROUTING - [0:0]
-X AMBIT_PREROUTING
:AMBIT_OUTPUT - [0:0]
-X AMBIT_OUTPUT
COMMIT
"
        );
    }

    #[test]
    fn host_rules_snat_local_tcp_and_keep_their_targets() {
        assert_eq!(
            probe_rule("10.244.1.2".parse().expect("ip")),
            "-A AMBIT_POSTROUTING -d 10.244.1.2/32 -p tcp -m addrtype --src-type LOCAL -j SNAT --to-source 169.254.7.127"
        );
        assert_eq!(
            probe_rule("fd00::2".parse().expect("ip")),
            "-A AMBIT_POSTROUTING -d fd00::2/128 -p tcp -m addrtype --src-type LOCAL -j SNAT \
             --to-source fd16:9254:7127:1337:ffff:ffff:ffff:ffff"
        );
        let fresh = host_install_script(&NatTable::parse(EMPTY)).expect("a script");
        assert_eq!(
            fresh,
            "*nat\n-N AMBIT_POSTROUTING\n-I POSTROUTING 1 -j AMBIT_POSTROUTING\nCOMMIT\n"
        );
        let installed = NatTable::parse(
            "*nat
:POSTROUTING ACCEPT [0:0]
:AMBIT_POSTROUTING - [0:0]
-A POSTROUTING -j AMBIT_POSTROUTING
-A AMBIT_POSTROUTING -d 10.244.1.2/32 -p tcp -m addrtype --src-type LOCAL -j SNAT --to-source 169.254.7.127
COMMIT
",
        );
        assert_eq!(
            host_install_script(&installed),
            None,
            "nothing flushed, nothing re-added"
        );
    }
}
