//! The `CNI_*` variables the runtime passes (spec "Parameters"), read once from the process in
//! `main` or built from pairs in tests, so no test touches the real environment. Each accessor
//! checks its value and says which variable is wrong.

use std::{collections::BTreeMap, ffi::OsString, path::PathBuf};

use crate::{
    args::CniArgs,
    error::{CniError, Quoted},
};

pub const CNI_COMMAND: &str = "CNI_COMMAND";
pub const CNI_CONTAINERID: &str = "CNI_CONTAINERID";
pub const CNI_NETNS: &str = "CNI_NETNS";
pub const CNI_IFNAME: &str = "CNI_IFNAME";
pub const CNI_ARGS: &str = "CNI_ARGS";
/// Where the runtime's plugins live; we exec none, so it is not read.
pub const CNI_PATH: &str = "CNI_PATH";

const VARIABLES: [&str; 6] = [CNI_COMMAND, CNI_CONTAINERID, CNI_NETNS, CNI_IFNAME, CNI_ARGS, CNI_PATH];

/// A CNI command (`CNI_COMMAND`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Version,
    Status,
    Gc,
}

impl Command {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Version => "VERSION",
            Self::Status => "STATUS",
            Self::Gc => "GC",
        }
    }
}

/// The runtime's `CNI_*` variables.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    vars: BTreeMap<&'static str, OsString>,
}

impl Environment {
    /// Reads the `CNI_*` variables of this process.
    pub fn from_process() -> Self {
        let vars = VARIABLES
            .into_iter()
            .filter_map(|name| Some((name, std::env::var_os(name)?)))
            .collect();
        Self { vars }
    }

    /// An environment holding `pairs`; names other than the `CNI_*` variables are dropped.
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> Self {
        let vars = pairs
            .into_iter()
            .filter_map(|(name, value)| {
                let name = VARIABLES.into_iter().find(|known| *known == name)?;
                Some((name, OsString::from(value)))
            })
            .collect();
        Self { vars }
    }

    /// The variable's value; unset and empty are the same (`None`).
    fn value(&self, name: &'static str) -> Result<Option<&str>, CniError> {
        match self.vars.get(name) {
            None => Ok(None),
            Some(value) if value.is_empty() => Ok(None),
            Some(value) => value.to_str().map(Some).ok_or_else(|| CniError::InvalidEnv {
                name,
                value: value.to_string_lossy().into_owned(),
                reason: "not valid UTF-8",
            }),
        }
    }

    fn required(&self, name: &'static str, command: Command) -> Result<&str, CniError> {
        self.value(name)?.ok_or(CniError::MissingEnv {
            name,
            command: command.as_str(),
        })
    }

    /// `CNI_COMMAND`.
    pub fn command(&self) -> Result<Command, CniError> {
        let value = self.value(CNI_COMMAND)?.ok_or(CniError::MissingEnv {
            name: CNI_COMMAND,
            command: "any command",
        })?;
        Ok(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            other => {
                return Err(CniError::UnknownCommand {
                    value: other.to_owned(),
                });
            }
        })
    }

    /// `CNI_CONTAINERID`: required; per the spec an alphanumeric followed by alphanumerics, `_`,
    /// `.` or `-`.
    pub fn container_id(&self, command: Command) -> Result<String, CniError> {
        let value = self.required(CNI_CONTAINERID, command)?;
        let mut bytes = value.bytes();
        let valid = bytes.next().is_some_and(|first| first.is_ascii_alphanumeric())
            && bytes.all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'_' | b'.' | b'-'));
        if !valid {
            return Err(CniError::InvalidEnv {
                name: CNI_CONTAINERID,
                value: value.to_owned(),
                reason: "a container ID starts with a letter or digit followed by letters, digits, `_`, `.` or `-`",
            });
        }
        Ok(value.to_owned())
    }

    /// `CNI_NETNS`, required (ADD, CHECK).
    pub fn netns(&self, command: Command) -> Result<PathBuf, CniError> {
        self.required(CNI_NETNS, command).map(PathBuf::from)
    }

    /// `CNI_NETNS` where it may be missing or empty (DEL: the namespace may be gone).
    pub fn optional_netns(&self) -> Result<Option<PathBuf>, CniError> {
        Ok(self.value(CNI_NETNS)?.map(PathBuf::from))
    }

    /// `CNI_IFNAME`: required; a Linux interface name as the spec restricts it.
    pub fn ifname(&self, command: Command) -> Result<String, CniError> {
        let value = self.required(CNI_IFNAME, command)?;
        let reason = if value.len() >= 16 {
            Some("an interface name is shorter than 16 bytes")
        } else if value == "." || value == ".." {
            Some("an interface name is not `.` or `..`")
        } else if value.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
            Some("an interface name has no `/`, `:` or whitespace")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(CniError::InvalidEnv {
                name: CNI_IFNAME,
                value: value.to_owned(),
                reason,
            }),
            None => Ok(value.to_owned()),
        }
    }

    /// `CNI_ARGS`, parsed; unset means no arguments.
    pub fn cni_args(&self) -> Result<CniArgs, CniError> {
        Ok(CniArgs::parse(self.value(CNI_ARGS)?.unwrap_or_default())?)
    }

    /// `CNI_CONTAINERID` as given, quoted for logs, whatever it holds.
    pub fn container_id_for_logs(&self) -> Option<String> {
        self.vars
            .get(CNI_CONTAINERID)
            .map(|value| Quoted(&value.to_string_lossy()).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::code;

    #[test]
    fn commands() {
        for (raw, command) in [
            ("ADD", Command::Add),
            ("DEL", Command::Del),
            ("CHECK", Command::Check),
            ("VERSION", Command::Version),
            ("STATUS", Command::Status),
            ("GC", Command::Gc),
        ] {
            let env = Environment::from_pairs([(CNI_COMMAND, raw)]);
            assert_eq!(env.command().ok(), Some(command));
            assert_eq!(command.as_str(), raw);
        }
        let error = Environment::from_pairs([(CNI_COMMAND, "add")])
            .command()
            .expect_err("case matters");
        assert_eq!(error.code(), code::INVALID_ENVIRONMENT);
        let error = Environment::default().command().expect_err("unset");
        assert_eq!(
            error.to_string(),
            "CNI_COMMAND is not set; the runtime must set it for any command"
        );
    }

    #[test]
    fn empty_counts_as_unset() {
        let env = Environment::from_pairs([(CNI_NETNS, ""), (CNI_IFNAME, "")]);
        assert_eq!(env.optional_netns().ok(), Some(None));
        let error = env.netns(Command::Add).expect_err("empty netns");
        assert_eq!(
            error.to_string(),
            "CNI_NETNS is not set; the runtime must set it for ADD"
        );
        assert!(env.ifname(Command::Del).is_err());
    }

    #[test]
    fn container_ids_and_interface_names_are_checked() {
        let env = Environment::from_pairs([(CNI_CONTAINERID, "abc_1.2-3"), (CNI_IFNAME, "eth0")]);
        assert_eq!(env.container_id(Command::Add).ok().as_deref(), Some("abc_1.2-3"));
        assert_eq!(env.ifname(Command::Add).ok().as_deref(), Some("eth0"));
        for bad in ["-abc", "a/b", "a b", "a\n"] {
            let env = Environment::from_pairs([(CNI_CONTAINERID, bad)]);
            let error = env.container_id(Command::Add).expect_err(bad);
            assert_eq!(error.code(), code::INVALID_ENVIRONMENT);
            assert!(error.to_string().starts_with("CNI_CONTAINERID=\""), "{error}");
        }
        for bad in [".", "..", "a/b", "a:b", "a b", "sixteen-chars-xx"] {
            let env = Environment::from_pairs([(CNI_IFNAME, bad)]);
            assert!(env.ifname(Command::Add).is_err(), "{bad}");
        }
    }

    #[test]
    fn non_utf8_values_are_named() {
        use std::os::unix::ffi::OsStringExt;
        let mut env = Environment::default();
        env.vars.insert(CNI_NETNS, OsString::from_vec(vec![b'/', 0xff]));
        let error = env.optional_netns().expect_err("not UTF-8");
        assert!(error.to_string().starts_with("CNI_NETNS="), "{error}");
        assert!(error.to_string().ends_with("not valid UTF-8"), "{error}");
    }

    #[test]
    fn only_cni_variables_are_kept() {
        let env = Environment::from_pairs([("HOME", "/root"), (CNI_ARGS, "K8S_POD_NAME=a")]);
        assert_eq!(env.vars.len(), 1);
        assert_eq!(env.cni_args().ok().and_then(|args| args.pod_name).as_deref(), Some("a"));
    }
}
