//! The in-pod traffic redirection rules (what Ambit's CNI agent programs in each enrolled pod),
//! as an nftables table of our own applied atomically inside the pod's namespace. This module
//! only installs and removes the rules; the listeners they redirect to are ztunnel's.

use std::process::Command;

use crate::{Pod, command};

/// Mark on ztunnel's own sockets (0x539 = 1337, the value Istio's in-pod rules exempt).
pub const ZTUNNEL_MARK: u32 = 0x539;
/// ztunnel's outbound listener inside each captured pod.
pub const OUTBOUND_PORT: u16 = 15001;
/// ztunnel's inbound plaintext listener inside each captured pod.
pub const INBOUND_PLAINTEXT_PORT: u16 = 15006;
/// ztunnel's inbound HBONE (mTLS) listener inside each captured pod.
pub const HBONE_PORT: u16 = 15008;

/// The capture table, applied with `nft -f -` inside the pod's namespace.
///
/// - `output`: every TCP connection the pod opens goes to ztunnel's 15001, except ztunnel's own
///   (marked 0x539) and traffic to loopback.
/// - `prerouting`: every TCP connection arriving at the pod goes to ztunnel's 15006, except HBONE
///   on 15008 (ztunnel terminates it itself), loopback and ztunnel's own (marked) traffic.
///
/// NAT chains only see a connection's first packet, so replies are never redirected. The
/// leading `add`/`delete` pair makes re-applying replace the table rather than duplicate rules,
/// in one transaction.
pub const CAPTURE_RULES: &str = r#"add table inet ambit
delete table inet ambit
table inet ambit {
    chain output {
        type nat hook output priority -100; policy accept;
        meta mark 0x539 return
        oifname "lo" return
        ip daddr 127.0.0.0/8 return
        meta l4proto tcp redirect to :15001
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        meta mark 0x539 return
        iifname "lo" return
        tcp dport 15008 return
        meta l4proto tcp redirect to :15006
    }
}
"#;

/// Deletes the table; the `add` first makes it a no-op when the table is absent.
const REMOVE_RULES: &str = "add table inet ambit\ndelete table inet ambit\n";

impl Pod {
    /// Installs [`CAPTURE_RULES`] (replacing any earlier copy) inside the pod.
    pub fn install_capture(&self) -> anyhow::Result<()> {
        self.nft(CAPTURE_RULES)
    }

    /// Deletes table `inet ambit` from the pod; a no-op if it is absent.
    pub fn remove_capture(&self) -> anyhow::Result<()> {
        self.nft(REMOVE_RULES)
    }

    /// `nft list ruleset` inside the pod, for assertions and debugging.
    pub fn nft_ruleset(&self) -> anyhow::Result<String> {
        self.netns.exec(&["nft", "list", "ruleset"])
    }

    fn nft(&self, script: &str) -> anyhow::Result<()> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.netns.name(), "nft", "-f", "-"]);
        command::output_with_stdin(&mut cmd, Some(script))
            .map(drop)
            .map_err(|e| {
                e.context(format!(
                    "nftables in pod {} ({}); is nft installed?",
                    self.name, self.netns
                ))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules_name_the_documented_ports_and_mark() {
        assert!(CAPTURE_RULES.contains(&format!("redirect to :{OUTBOUND_PORT}")));
        assert!(CAPTURE_RULES.contains(&format!("redirect to :{INBOUND_PLAINTEXT_PORT}")));
        assert!(CAPTURE_RULES.contains(&format!("tcp dport {HBONE_PORT} return")));
        assert!(CAPTURE_RULES.contains(&format!("meta mark {ZTUNNEL_MARK:#x} return")));
    }
}
