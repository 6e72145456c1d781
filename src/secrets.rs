//! How secrets stay out of logs and errors (issue 12): [`redact_url`] and
//! [`scrub`] for URLs that may carry credentials (Redis, webhooks),
//! [`has_credentials`] for the start-up warning about secrets given as
//! command-line flags. Depends on nothing else in the crate; the `Debug`
//! impls of the configuration types (`config::debug`) and the secret files
//! (`--api-key-file`, `--jwt-secret-file`, in [`crate::config`]) build on it.

/// What a secret prints as.
pub const REDACTED: &str = "<redacted>";

/// What a URL's credentials print as.
const REDACTED_CREDENTIALS: &str = "***";

/// `url` with its password (or its whole user info, when the URL does not
/// parse cleanly) replaced by `***`, for logs and errors.
///
/// * `redis://user:pass@host:6379/0` → `redis://user:***@host:6379/0`
/// * `rediss://:pass@host` → `rediss://:***@host`
/// * `redis://secret@host` (user info without a `:`) → `redis://***@host`
///   (some clients read a lone user info as the password)
/// * anything that does not parse as a URL, or whose user info is not
///   exactly `user:password` before the last `@`: everything between `://`
///   (or the start) and the last `@` → `***`
/// * no `@` at all: unchanged (there is nothing to hide), but for
/// * a password in the query, as Redis URLs of Unix sockets carry it
///   (`redis+unix:///run/redis.sock?user=u&pass=secret`): the values of
///   `pass` and `password` → `***`, wherever the URL has them.
pub fn redact_url(url: &str) -> String {
    redact_query(&redact_userinfo(url))
}

/// The query parameters that carry a password.
fn is_password_key(k: &str) -> bool {
    k.eq_ignore_ascii_case("pass") || k.eq_ignore_ascii_case("password")
}

/// `url` cut around its query: what comes before `?`, the query, and the
/// fragment after `#` if any.
fn split_query(url: &str) -> Option<(&str, &str, Option<&str>)> {
    let (head, rest) = url.split_once('?')?;
    Some(match rest.split_once('#') {
        Some((q, f)) => (head, q, Some(f)),
        None => (head, rest, None),
    })
}

/// The value of a query parameter that carries a password.
fn password_in(param: &str) -> Option<&str> {
    let (k, v) = param.split_once('=')?;
    (is_password_key(k) && !v.is_empty()).then_some(v)
}

/// The password values in `url`'s query.
fn query_passwords(url: &str) -> impl Iterator<Item = &str> {
    let query = split_query(url).map_or("", |(_, q, _)| q);
    query.split('&').filter_map(password_in)
}

fn redact_query(url: &str) -> String {
    let Some((head, query, fragment)) = split_query(url) else {
        return url.to_owned();
    };
    let query: Vec<String> = query
        .split('&')
        .map(|p| match password_in(p) {
            Some(v) => format!("{}{REDACTED_CREDENTIALS}", &p[..p.len() - v.len()]),
            None => p.to_owned(),
        })
        .collect();
    let mut out = format!("{head}?{}", query.join("&"));
    if let Some(f) = fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

fn redact_userinfo(url: &str) -> String {
    let Some(at) = url.rfind('@') else {
        return url.to_owned();
    };
    let start = match url.find("://") {
        Some(s) if s + 3 <= at => s + 3,
        _ => 0,
    };
    let userinfo = &url[start..at];
    // Keep the user name only when the URL parses and its user info is
    // plainly `user:password` ending at the last `@` (so nothing of the
    // password can hide in what is kept).
    if let Some((user, pass)) = userinfo.split_once(':')
        && let Ok(parsed) = reqwest::Url::parse(url)
        && parsed.username() == user
        && parsed.password().unwrap_or_default() == pass
        && !user.contains(['/', '?', '#', '@'])
    {
        return format!(
            "{}{user}:{REDACTED_CREDENTIALS}{}",
            &url[..start],
            &url[at..]
        );
    }
    format!("{}{REDACTED_CREDENTIALS}{}", &url[..start], &url[at..])
}

/// `text` (an error message about `url`) with `url` and its user info
/// replaced by their redacted forms, in case a library echoed them.
pub fn scrub(text: &str, url: &str) -> String {
    let mut out = text.replace(url, &redact_url(url));
    for pass in query_passwords(url) {
        out = out.replace(pass, REDACTED_CREDENTIALS);
    }
    if let Some(at) = url.rfind('@') {
        let start = url.find("://").map_or(0, |s| s + 3).min(at);
        let userinfo = &url[start..at];
        if let Some((_, pass)) = userinfo.split_once(':') {
            if !pass.is_empty() {
                out = out.replace(pass, REDACTED_CREDENTIALS);
            }
        } else if !userinfo.is_empty() {
            out = out.replace(userinfo, REDACTED_CREDENTIALS);
        }
    }
    out
}

/// Whether `url` carries credentials (a user info part).
pub fn has_credentials(url: &str) -> bool {
    redact_url(url) != url
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_cases() {
        for (given, want) in [
            (
                "redis://user:pass@host:6379/0",
                "redis://user:***@host:6379/0",
            ),
            ("rediss://:pass@host", "rediss://:***@host"),
            ("rediss://:p%40ss@host:6380", "rediss://:***@host:6380"),
            ("redis://secret@host", "redis://***@host"),
            ("redis://host:6379", "redis://host:6379"),
            ("redis://h", "redis://h"),
            ("", ""),
            // Unparsable: everything between :// and the last @.
            (
                "redis://user:hunter2@host:notaport",
                "redis://***@host:notaport",
            ),
            ("redis://u:pa@ss@host", "redis://***@host"),
            ("redis://u:pa/ss@host", "redis://***@host"),
            ("redis://:pa ss@host", "redis://***@host"),
            ("user:pass@host", "***@host"),
            ("not a url at all", "not a url at all"),
            (
                "https://u:p@auth.example.com/x?y=1",
                "https://u:***@auth.example.com/x?y=1",
            ),
            (
                "redis+unix:///run/redis.sock?user=u&pass=hunter2",
                "redis+unix:///run/redis.sock?user=u&pass=***",
            ),
            (
                "unix:///s.sock?db=1&PASSWORD=x&a=b#frag",
                "unix:///s.sock?db=1&PASSWORD=***&a=b#frag",
            ),
            ("redis+unix:///s.sock?pass=", "redis+unix:///s.sock?pass="),
        ] {
            assert_eq!(redact_url(given), want, "{given}");
        }
        assert!(has_credentials("redis://:x@h"));
        assert!(!has_credentials("redis://h:1"));
        assert!(has_credentials("redis+unix:///s.sock?pass=p"));
    }

    #[test]
    fn scrub_removes_url_and_password() {
        let u = "redis://me:hunter2@host:bad";
        let text = format!("{u:?} is wrong; password hunter2 rejected");
        let s = scrub(&text, u);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("host:bad"), "{s}");
        let u = "redis+unix:///s.sock?pass=hunter2";
        let s = scrub(&format!("cannot reach {u}: auth hunter2 refused"), u);
        assert!(!s.contains("hunter2"), "{s}");
        assert!(s.contains("/s.sock"), "{s}");
    }
}
