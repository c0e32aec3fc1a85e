//! The checks behind every CRD's `validate()`: field paths, the violations they collect, and the
//! value checks (ports, durations, percentages, IP blocks) shared by the resources.
//!
//! The generated schemas carry the same rules for API servers that enforce them; these functions
//! are for the sources that do not (the local manifest directory, the test API emulator).

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

/// A port number 1-65535 written as a decimal string (Istio writes ports as strings).
pub const PORT_PATTERN: &str =
    "^([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$";

/// A duration such as `1.5s`, `250ms` or `1h30m`: one or more number-unit pairs.
pub const DURATION_PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$";

/// The CEL rule that keeps a duration above zero, next to [`DURATION_PATTERN`].
pub(crate) const POSITIVE_DURATION_RULE: &str = "duration(self) > duration('0s')";

/// The longest duration string accepted; bounds the cost of the CEL rule above.
pub(crate) const DURATION_MAX_LENGTH: u32 = 32;

/// The `when` keys Istio defines; the L4 ones are listed in [`L4_CONDITION_KEYS`].
pub const CONDITION_KEY_PATTERN: &str = r"^(source\.ip|remote\.ip|source\.namespace|source\.principal|destination\.ip|destination\.port|connection\.sni|request\.auth\.(principal|audiences|presenter)|request\.auth\.claims\[.+\]|request\.headers\[.+\]|experimental\.envoy\.filters\..+)$";

/// The `when` keys ztunnel can evaluate; any other key needs a waypoint.
pub const L4_CONDITION_KEYS: [&str; 6] = [
    "source.ip",
    "remote.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
];

/// Where in an object a value sits, written as in `kubectl explain`: `spec.rules[0].to[1]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldPath(String);

impl FieldPath {
    /// The `spec` of an object.
    pub fn spec() -> Self {
        Self("spec".to_owned())
    }

    /// The child field `name`.
    pub fn field(&self, name: &str) -> Self {
        Self(format!("{}.{name}", self.0))
    }

    /// The list element `index`.
    pub fn index(&self, index: usize) -> Self {
        Self(format!("{}[{index}]", self.0))
    }

    /// The map entry `key`.
    pub fn key(&self, key: &str) -> Self {
        Self(format!("{}[{key:?}]", self.0))
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// One broken rule: the field, the offending value when there is one, and what is wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub value: Option<String>,
    pub reason: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.value {
            Some(value) => write!(f, "{}: {value:?} {}", self.path, self.reason),
            None => write!(f, "{}: {}", self.path, self.reason),
        }
    }
}

/// Every rule an object breaks, in field order; the message lists them all, `; `-separated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors {
    violations: Vec<Violation>,
}

impl ValidationErrors {
    /// The violations, at least one.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }
}

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, violation) in self.violations.iter().enumerate() {
            if n > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{violation}")?;
        }
        Ok(())
    }
}

/// Collects violations while a `validate()` walks an object.
#[derive(Debug, Default)]
pub(crate) struct Checker {
    violations: Vec<Violation>,
}

impl Checker {
    /// `value` at `path` breaks a rule.
    pub(crate) fn invalid(&mut self, path: &FieldPath, value: impl fmt::Display, reason: impl Into<String>) {
        self.violations.push(Violation {
            path: path.to_string(),
            value: Some(value.to_string()),
            reason: reason.into(),
        });
    }

    /// The object breaks a rule at `path` that no single value shows (a missing field, a conflict).
    pub(crate) fn wrong(&mut self, path: &FieldPath, reason: impl Into<String>) {
        self.violations.push(Violation {
            path: path.to_string(),
            value: None,
            reason: reason.into(),
        });
    }

    pub(crate) fn finish(self) -> Result<(), ValidationErrors> {
        if self.violations.is_empty() {
            Ok(())
        } else {
            Err(ValidationErrors {
                violations: self.violations,
            })
        }
    }

    /// A port written as a string, as Istio's `ports`.
    pub(crate) fn port_text(&mut self, path: &FieldPath, text: &str) {
        if parse_port(text).is_none() {
            self.invalid(path, text, "is not a port (1-65535)");
        }
    }

    pub(crate) fn range(&mut self, path: &FieldPath, value: i64, min: i64, max: i64, reason: &str) {
        if !(min..=max).contains(&value) {
            self.invalid(path, value, reason);
        }
    }

    pub(crate) fn at_least(&mut self, path: &FieldPath, value: i64, min: i64) {
        if value < min {
            self.invalid(path, value, format!("is below the minimum {min}"));
        }
    }

    pub(crate) fn percentage(&mut self, path: &FieldPath, value: f64) {
        if !(0.0..=100.0).contains(&value) {
            self.invalid(path, value, "is not a percentage (0-100)");
        }
    }

    /// A duration above zero in [`DURATION_PATTERN`]'s syntax.
    pub(crate) fn positive_duration(&mut self, path: &FieldPath, text: &str) {
        match parse_duration(text) {
            Ok(duration) if duration.is_zero() => self.invalid(path, text, "must be longer than zero"),
            Ok(_) => {}
            Err(error) => self.invalid(path, text, error.to_string()),
        }
    }

    /// An IP address or a CIDR block (`10.0.0.0/8`, `fd00::/8`).
    pub(crate) fn ip_block(&mut self, path: &FieldPath, text: &str) {
        if !is_ip_block(text) {
            self.invalid(path, text, "is neither an IP address nor a CIDR block");
        }
    }

    /// A string that must not be empty: an empty pattern matches nothing.
    pub(crate) fn not_empty(&mut self, path: &FieldPath, text: &str) {
        if text.is_empty() {
            self.invalid(path, text, "must not be empty");
        }
    }
}

/// A decimal port 1-65535 without sign or leading zeros.
pub fn parse_port(text: &str) -> Option<u16> {
    if text.starts_with('0') || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    text.parse().ok().filter(|port| *port != 0)
}

/// Whether `text` is an IP address or an address with a prefix length that fits it.
pub fn is_ip_block(text: &str) -> bool {
    let (address, prefix) = match text.split_once('/') {
        Some((address, prefix)) => (address, Some(prefix)),
        None => (text, None),
    };
    let Ok(ip) = address.parse::<IpAddr>() else {
        return false;
    };
    let max = if ip.is_ipv4() { 32 } else { 128 };
    prefix.is_none_or(|p| !p.starts_with('+') && p.parse::<u8>().is_ok_and(|len| len <= max))
}

/// Why a duration string does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DurationError {
    #[error("is not a duration: expected number-unit pairs such as 1.5s, 250ms or 1h30m (units ms, s, m, h)")]
    Syntax,
    #[error("is too long for a duration")]
    Overflow,
}

/// Parses [`DURATION_PATTERN`]'s syntax: `1h30m`, `1.5s`, `250ms`.
pub fn parse_duration(text: &str) -> Result<Duration, DurationError> {
    let mut rest = text;
    let mut total = Duration::ZERO;
    if rest.is_empty() {
        return Err(DurationError::Syntax);
    }
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or(DurationError::Syntax)?;
        let (number, tail) = rest.split_at(number_end);
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        if whole.is_empty() || (number.contains('.') && fraction.is_empty()) || fraction.contains('.') {
            return Err(DurationError::Syntax);
        }
        let (unit_nanos, tail) = if let Some(tail) = tail.strip_prefix("ms") {
            (1_000_000_u128, tail)
        } else if let Some(tail) = tail.strip_prefix('s') {
            (1_000_000_000, tail)
        } else if let Some(tail) = tail.strip_prefix('m') {
            (60_000_000_000, tail)
        } else if let Some(tail) = tail.strip_prefix('h') {
            (3_600_000_000_000, tail)
        } else {
            return Err(DurationError::Syntax);
        };
        let whole: u128 = whole.parse().map_err(|_| DurationError::Overflow)?;
        // Fractions below a nanosecond are dropped, as Go's time.ParseDuration does.
        let fraction_nanos = fraction.chars().take(18).zip(1..).fold(0_u128, |acc, (digit, place)| {
            let digit = u128::from(digit.to_digit(10).unwrap_or(0));
            acc + digit * unit_nanos / 10_u128.pow(place)
        });
        let nanos = whole
            .checked_mul(unit_nanos)
            .and_then(|n| n.checked_add(fraction_nanos))
            .ok_or(DurationError::Overflow)?;
        let part = u64::try_from(nanos)
            .map(Duration::from_nanos)
            .map_err(|_| DurationError::Overflow)?;
        total = total.checked_add(part).ok_or(DurationError::Overflow)?;
        rest = tail;
    }
    Ok(total)
}

/// Whether `key` is one of Istio's `when` keys.
pub fn is_condition_key(key: &str) -> bool {
    let bracketed = |prefix: &str| {
        key.strip_prefix(prefix)
            .and_then(|rest| rest.strip_suffix(']'))
            .is_some_and(|inner| !inner.is_empty())
    };
    L4_CONDITION_KEYS.contains(&key)
        || matches!(
            key,
            "connection.sni" | "request.auth.principal" | "request.auth.audiences" | "request.auth.presenter"
        )
        || bracketed("request.auth.claims[")
        || bracketed("request.headers[")
        || key
            .strip_prefix("experimental.envoy.filters.")
            .is_some_and(|rest| !rest.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("0.001ms"), Ok(Duration::from_nanos(1000)));
        for bad in ["", "1", "s", "1.s", ".5s", "1.2.3s", "1d", "-1s", "1 s", "1sx"] {
            assert_eq!(parse_duration(bad), Err(DurationError::Syntax), "{bad}");
        }
        assert_eq!(parse_duration("99999999999999999999h"), Err(DurationError::Overflow));
    }

    #[test]
    fn ports_and_blocks() {
        assert_eq!(parse_port("8080"), Some(8080));
        assert_eq!(parse_port("65535"), Some(65535));
        for bad in ["0", "65536", "070", "+80", "", "http"] {
            assert_eq!(parse_port(bad), None, "{bad}");
        }
        for good in ["10.0.0.1", "10.0.0.0/8", "fd00::/8", "::1", "0.0.0.0/0"] {
            assert!(is_ip_block(good), "{good}");
        }
        for bad in ["10.0.0.0/33", "fd00::/129", "10.0.0/8", "10.0.0.0/", "10.0.0.0/+8", "x"] {
            assert!(!is_ip_block(bad), "{bad}");
        }
    }

    #[test]
    fn condition_keys() {
        for good in [
            "source.ip",
            "request.headers[x-user]",
            "request.auth.claims[iss]",
            "connection.sni",
        ] {
            assert!(is_condition_key(good), "{good}");
        }
        for bad in ["source.ips", "request.headers[]", "request.headers", "foo"] {
            assert!(!is_condition_key(bad), "{bad}");
        }
    }

    #[test]
    fn messages_name_path_and_value() {
        let mut checker = Checker::default();
        let path = FieldPath::spec().field("rules").index(0).field("ports").index(1);
        checker.port_text(&path, "70000");
        checker.wrong(&FieldPath::spec(), "needs delay or abort");
        let error = checker.finish().err().map(|e| e.to_string());
        assert_eq!(
            error.as_deref(),
            Some(r#"spec.rules[0].ports[1]: "70000" is not a port (1-65535); spec: needs delay or abort"#)
        );
        assert_eq!(FieldPath::spec().field("m").key("80").to_string(), r#"spec.m["80"]"#);
    }
}
