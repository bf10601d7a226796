//! Domain types. Inputs are parsed once into these (SPEC §3, §8): a value of one of
//! these types has already passed every submit-time check.

use common::{eval, protocol::Variables};

pub use ledger::{SlaveId, SlaveState, TaskId, TaskStatus, Timestamp};

/// Longest expression accepted, in characters after trimming (SPEC §3).
pub const MAX_EXPRESSION_CHARS: usize = 10_000;
/// Most variables one task may bind (SPEC §8 limits).
pub const MAX_VARIABLES: usize = 100;
/// Longest variable name.
pub const MAX_VARIABLE_NAME_CHARS: usize = 64;
/// Longest simulated work a task may ask for (SPEC §3).
pub const MAX_DELAY_MS: u64 = 600_000;

/// Why a submission was refused at the door (400 `invalid_expression` / `invalid_request`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum InvalidTask {
    #[error("expression is blank")]
    BlankExpression,
    #[error("expression is {0} characters long; the limit is {MAX_EXPRESSION_CHARS}")]
    ExpressionTooLong(usize),
    #[error("{0}")]
    Expression(eval::EvalError),
    #[error("at most {MAX_VARIABLES} variables are allowed, got {0}")]
    TooManyVariables(usize),
    #[error(
        "variable name `{0}` must be 1..={MAX_VARIABLE_NAME_CHARS} letters, digits or `_`, starting with a letter or `_`"
    )]
    BadVariableName(String),
    #[error("variable `{0}` must be a finite number")]
    NonFiniteVariable(String),
    #[error("delay_ms must be between 0 and {MAX_DELAY_MS}, got {0}")]
    DelayOutOfRange(i64),
}

impl InvalidTask {
    /// Whether the expression itself is at fault (`invalid_expression`) rather than
    /// another field (`invalid_request`).
    pub fn is_about_expression(&self) -> bool {
        matches!(self, Self::BlankExpression | Self::ExpressionTooLong(_) | Self::Expression(_))
    }
}

/// A task as submitted, after every submit-time check of SPEC §3.
#[derive(Debug, Clone, PartialEq)]
pub struct NewTask {
    pub expression: String,
    pub variables: Variables,
    pub delay_ms: u64,
}

impl NewTask {
    /// The only way in: trims the expression, checks lengths, names, ranges, and that
    /// meval can evaluate it with these variables.
    pub fn parse(expression: &str, variables: Variables, delay_ms: i64) -> Result<Self, InvalidTask> {
        let expression = expression.trim();
        if expression.is_empty() {
            return Err(InvalidTask::BlankExpression);
        }
        let chars = expression.chars().count();
        if chars > MAX_EXPRESSION_CHARS {
            return Err(InvalidTask::ExpressionTooLong(chars));
        }
        let delay_ms = u64::try_from(delay_ms)
            .ok()
            .filter(|delay| *delay <= MAX_DELAY_MS)
            .ok_or(InvalidTask::DelayOutOfRange(delay_ms))?;
        if variables.len() > MAX_VARIABLES {
            return Err(InvalidTask::TooManyVariables(variables.len()));
        }
        for (name, value) in &variables {
            if !is_variable_name(name) {
                return Err(InvalidTask::BadVariableName(shortened(name)));
            }
            if !value.is_finite() {
                return Err(InvalidTask::NonFiniteVariable(shortened(name)));
            }
        }
        eval::check(expression, &variables).map_err(InvalidTask::Expression)?;
        Ok(Self { expression: expression.to_owned(), variables, delay_ms })
    }
}

fn is_variable_name(name: &str) -> bool {
    let mut chars = name.chars();
    let starts_well = chars.next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    starts_well
        && name.len() <= MAX_VARIABLE_NAME_CHARS
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Longest slave name accepted at registration.
pub const MAX_SLAVE_NAME_CHARS: usize = 64;

/// A slave's name: 1..=64 letters, digits, `-`, `_` or `.` (unique in the registry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveName(String);

impl SlaveName {
    /// The only way in; `None` when the name breaks the rule.
    pub fn parse(raw: &str) -> Option<Self> {
        let fits = !raw.is_empty()
            && raw.chars().count() <= MAX_SLAVE_NAME_CHARS
            && raw.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
        fits.then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A slave's base URL: `http(s)://host:port`, no credentials, path, query or fragment
/// (SPEC §8), stored without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlaveUrl(String);

impl SlaveUrl {
    /// Parses and normalises; the error says which rule was broken.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let url = reqwest::Url::parse(raw).map_err(|error| format!("url `{raw}` is not a URL: {error}"))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(format!("url `{raw}` must use http or https"));
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("url `{raw}` must not carry credentials"));
        }
        if url.path() != "/" || url.query().is_some() || url.fragment().is_some() {
            return Err(format!("url `{raw}` must be http(s)://host:port with no path, query or fragment"));
        }
        let host = url.host_str().ok_or_else(|| format!("url `{raw}` has no host"))?;
        // The url crate forgets a default port (`:80` reads as no port), so the explicit
        // port of SPEC §8 is checked on the text; port 0 names no listening slave.
        let port = url.port_or_known_default().filter(|_| has_explicit_port(raw));
        let port = port.ok_or_else(|| format!("url `{raw}` must name its port: http(s)://host:port"))?;
        if port == 0 {
            return Err(format!("url `{raw}` has port 0; give the port the slave listens on"));
        }
        let host =
            if host.contains(':') && !host.starts_with('[') { format!("[{host}]") } else { host.to_owned() };
        Ok(Self(format!("{}://{host}:{port}", url.scheme())))
    }

    /// The normalised URL.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Whether the authority of `raw` (an already parsed URL) ends in `:digits`.
fn has_explicit_port(raw: &str) -> bool {
    let rest = raw.split_once("://").map_or(raw, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, host_port)| host_port);
    // `[::1]:9000`: the port follows the closing bracket; `[::1]` has none.
    let after_host = host_port.rsplit_once(']').map_or(host_port, |(_, after)| after);
    after_host
        .rsplit_once(':')
        .is_some_and(|(_, port)| !port.is_empty() && port.bytes().all(|b| b.is_ascii_digit()))
}

/// `text` for an error message: whole when short, else its start and its length, so a
/// 10 000-character name is not echoed back whole.
pub fn shortened(text: &str) -> String {
    const SHOWN_CHARS: usize = 32;
    let chars = text.chars().count();
    if chars <= SHOWN_CHARS {
        return text.to_owned();
    }
    let start: String = text.chars().take(SHOWN_CHARS).collect();
    format!("{start}… ({chars} characters)")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(pairs: &[(&str, f64)]) -> Variables {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
    }

    #[test]
    fn a_task_is_trimmed_and_checked() {
        let task = NewTask::parse("  sqrt(x)*pi ", vars(&[("x", 2.0)]), 0).unwrap();
        assert_eq!(task.expression, "sqrt(x)*pi");
    }

    #[test]
    fn blank_and_too_long_expressions_are_refused() {
        assert_eq!(NewTask::parse(" \t\n", Variables::new(), 0), Err(InvalidTask::BlankExpression));
        let long = "1+".repeat(5_000) + "1";
        assert_eq!(NewTask::parse(&long, Variables::new(), 0), Err(InvalidTask::ExpressionTooLong(10_001)));
    }

    #[test]
    fn unknown_variables_and_functions_are_refused_at_submit() {
        let error = NewTask::parse("x+1", Variables::new(), 0).unwrap_err();
        assert!(error.is_about_expression());
        assert_eq!(error.to_string(), "unknown variable `x`");
    }

    #[test]
    fn division_by_zero_is_not_a_submit_time_error() {
        assert!(NewTask::parse("1/0", Variables::new(), 0).is_ok());
    }

    #[test]
    fn delay_must_be_within_range() {
        assert_eq!(NewTask::parse("1", Variables::new(), -1), Err(InvalidTask::DelayOutOfRange(-1)));
        assert_eq!(
            NewTask::parse("1", Variables::new(), 600_001),
            Err(InvalidTask::DelayOutOfRange(600_001))
        );
        assert!(NewTask::parse("1", Variables::new(), 600_000).is_ok());
    }

    #[test]
    fn variables_need_plain_names_and_finite_values() {
        let error = NewTask::parse("1", vars(&[("a b", 1.0)]), 0).unwrap_err();
        assert_eq!(error, InvalidTask::BadVariableName("a b".into()));
        let error = NewTask::parse("x", vars(&[("x", f64::INFINITY)]), 0).unwrap_err();
        assert_eq!(error, InvalidTask::NonFiniteVariable("x".into()));
    }

    #[test]
    fn slave_names_are_short_plain_words() {
        assert_eq!(SlaveName::parse("slave-1.a_b").unwrap().as_str(), "slave-1.a_b");
        assert!(SlaveName::parse("").is_none());
        assert!(SlaveName::parse("a b").is_none());
        assert!(SlaveName::parse("slave/1").is_none());
        assert!(SlaveName::parse(&"a".repeat(64)).is_some());
        assert!(SlaveName::parse(&"a".repeat(65)).is_none());
    }

    #[test]
    fn slave_urls_are_host_and_port_only() {
        assert_eq!(SlaveUrl::parse("http://10.0.0.2:9000/").unwrap().as_str(), "http://10.0.0.2:9000");
        assert_eq!(SlaveUrl::parse("http://[::1]:9000").unwrap().as_str(), "http://[::1]:9000");
        assert!(SlaveUrl::parse("http://user:pw@host:1").is_err());
        assert!(SlaveUrl::parse("http://host:1/path").is_err());
        assert!(SlaveUrl::parse("http://host:1/?q=1").is_err());
        assert!(SlaveUrl::parse("ftp://host:1").is_err());
        assert!(SlaveUrl::parse("not a url").is_err());
    }

    #[test]
    fn slave_urls_name_a_real_port() {
        assert_eq!(SlaveUrl::parse("http://10.0.0.2:80").unwrap().as_str(), "http://10.0.0.2:80");
        assert!(SlaveUrl::parse("http://10.0.0.2").unwrap_err().contains("must name its port"));
        assert!(SlaveUrl::parse("https://slave.example/").unwrap_err().contains("must name its port"));
        assert!(SlaveUrl::parse("http://[::1]").is_err());
        assert!(SlaveUrl::parse("http://127.0.0.1:0").unwrap_err().contains("port 0"));
    }

    #[test]
    fn long_names_are_shortened_in_messages() {
        assert_eq!(shortened("x1"), "x1");
        let long = "a".repeat(10_000);
        let shown = shortened(&long);
        assert!(shown.len() < 60 && shown.ends_with("(10000 characters)"), "{shown}");
    }
}
