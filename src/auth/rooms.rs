//! Glob room allow-lists (`--room-allow 'public:*,user:{userId}:*'`): pattern
//! parsing, `{userId}` substitution and linear-time wildcard matching, plus the
//! [`GlobRoomValidator`] that combines server-wide patterns with the per-client
//! ones an authenticator granted (the JWT `rooms` claim).
//!
//! Pattern syntax: `*` matches any run of characters (empty too, `:` too), `?`
//! exactly one character, `{userId}` the client's user id taken literally (glob
//! characters inside a user id match only themselves); everything else is
//! literal. A pattern that mentions `{userId}` never matches for a client
//! without one (or with an empty one, which would otherwise turn
//! `user:{userId}:*` into the shared `user::*`).

use std::collections::HashSet;

use super::{BoxFuture, JoinRequest, RoomValidator, ready};

const USER_ID_PLACEHOLDER: &str = "{userId}";

/// Splits a comma-separated pattern list, trimming blanks and dropping empties.
pub fn parse_patterns(s: &str) -> Vec<String> {
    crate::config::comma_list(s)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Lit(char),
    One,
    Star,
    UserId,
}

/// What the matcher runs on, after `{userId}` has been expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    One,
    Star,
}

/// One parsed room pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPattern {
    source: String,
    parts: Vec<Part>,
    uses_user_id: bool,
}

impl RoomPattern {
    /// Parses a pattern; every string is a valid pattern.
    pub fn parse(pattern: &str) -> Self {
        let mut parts = Vec::with_capacity(pattern.len());
        let mut rest = pattern;
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix(USER_ID_PLACEHOLDER) {
                parts.push(Part::UserId);
                rest = after;
                continue;
            }
            let part = match c {
                '*' => Part::Star,
                '?' => Part::One,
                c => Part::Lit(c),
            };
            // `**` means the same as `*`; collapsing keeps the matcher's
            // backtracking bounded by the number of distinct stars.
            if !(part == Part::Star && parts.last() == Some(&Part::Star)) {
                parts.push(part);
            }
            rest = &rest[c.len_utf8()..];
        }
        let uses_user_id = parts.contains(&Part::UserId);
        Self {
            source: pattern.to_owned(),
            parts,
            uses_user_id,
        }
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `room` matches for a client with `user_id`.
    pub fn matches(&self, room: &str, user_id: Option<&str>) -> bool {
        match self.expand(user_id) {
            Some(toks) => {
                let text: Vec<char> = room.chars().collect();
                glob_match(&toks, &text)
            }
            None => false,
        }
    }

    /// Substitutes the user id as literal characters; `None` when the pattern
    /// needs a user id the client does not have.
    fn expand(&self, user_id: Option<&str>) -> Option<Vec<Tok>> {
        let user_id = match user_id {
            Some(u) if !u.is_empty() => Some(u),
            _ if self.uses_user_id => return None,
            _ => None,
        };
        let mut toks = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            match *part {
                Part::Lit(c) => toks.push(Tok::Lit(c)),
                Part::One => toks.push(Tok::One),
                Part::Star => toks.push(Tok::Star),
                Part::UserId => toks.extend(user_id.unwrap_or_default().chars().map(Tok::Lit)),
            }
        }
        Some(toks)
    }
}

/// Classic two-pointer wildcard match: on a mismatch, resume just after the
/// last `*`, letting it swallow one more character. Only the most recent star
/// is ever revisited, so the cost is O(pattern × text) in the worst case, with
/// no exponential blow-up on patterns like `a*a*a*…b`.
fn glob_match(pat: &[Tok], text: &[char]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    // (index of the last star in `pat`, text position it is matched up to)
    let mut backtrack: Option<(usize, usize)> = None;
    while t < text.len() {
        match pat.get(p) {
            Some(Tok::Star) => {
                backtrack = Some((p, t));
                p += 1;
                continue;
            }
            Some(Tok::One) => {
                p += 1;
                t += 1;
                continue;
            }
            Some(Tok::Lit(c)) if *c == text[t] => {
                p += 1;
                t += 1;
                continue;
            }
            _ => {}
        }
        match backtrack {
            Some((star, swallowed)) => {
                p = star + 1;
                t = swallowed + 1;
                backtrack = Some((star, t));
            }
            None => return false,
        }
    }
    pat[p..].iter().all(|tok| *tok == Tok::Star)
}

/// Allows a room when it matches any server-wide pattern or any of the
/// client's own patterns ([`JoinRequest::room_patterns`]).
#[derive(Debug, Clone, Default)]
pub struct GlobRoomValidator {
    patterns: Vec<RoomPattern>,
}

impl GlobRoomValidator {
    /// Server-wide patterns (empty strings are ignored). An empty list is
    /// useful too: clients may then join only what their identity grants.
    pub fn new(patterns: Vec<String>) -> Self {
        Self {
            patterns: patterns
                .iter()
                .filter(|p| !p.is_empty())
                .map(|p| RoomPattern::parse(p))
                .collect(),
        }
    }

    /// Shorthand for `new(parse_patterns(list))`.
    pub fn from_list(list: &str) -> Self {
        Self::new(parse_patterns(list))
    }

    /// The server-wide patterns.
    pub fn patterns(&self) -> &[RoomPattern] {
        &self.patterns
    }

    /// Synchronous core of [`RoomValidator::allowed_rooms`]: the allowed subset
    /// of `rooms`, in request order, without duplicates.
    pub fn allowed(
        &self,
        user_id: Option<&str>,
        rooms: &[String],
        extra_patterns: Option<&[String]>,
    ) -> Vec<String> {
        let extra: Vec<RoomPattern> = extra_patterns
            .unwrap_or_default()
            .iter()
            .map(|p| RoomPattern::parse(p))
            .collect();
        // Expand `{userId}` once per request, not once per room.
        let compiled: Vec<Vec<Tok>> = self
            .patterns
            .iter()
            .chain(&extra)
            .filter_map(|p| p.expand(user_id))
            .collect();

        let mut seen = HashSet::with_capacity(rooms.len());
        let mut allowed = Vec::with_capacity(rooms.len());
        for room in rooms {
            if seen.contains(room.as_str()) {
                continue;
            }
            let text: Vec<char> = room.chars().collect();
            if compiled.iter().any(|toks| glob_match(toks, &text)) {
                seen.insert(room.as_str());
                allowed.push(room.clone());
            }
        }
        allowed
    }
}

impl RoomValidator for GlobRoomValidator {
    fn allowed_rooms(&self, req: JoinRequest) -> BoxFuture<Vec<String>> {
        ready(self.allowed(
            req.user_id.as_deref(),
            &req.rooms,
            req.room_patterns.as_deref(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::poll_now;
    use std::task::Poll;
    use std::time::{Duration, Instant};

    fn m(pattern: &str, room: &str) -> bool {
        RoomPattern::parse(pattern).matches(room, None)
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn star_matches_any_run_including_empty_and_colons() {
        assert!(m("public:*", "public:"));
        assert!(m("public:*", "public:news"));
        assert!(m("public:*", "public:a:b:c"));
        assert!(!m("public:*", "public"));
        assert!(!m("public:*", "publicx:a"));
        assert!(!m("public:*", "xpublic:a"));
        assert!(m("*", ""));
        assert!(m("*", "anything:at:all"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "a-b-b-c"));
        assert!(!m("a*b*c", "a-b-b-cd"));
        assert!(m("*:end", "x:y:end"));
        assert!(m("a**b", "ab"));
    }

    #[test]
    fn question_mark_matches_exactly_one_character() {
        assert!(m("a?c", "abc"));
        assert!(m("a?c", "a:c"));
        assert!(m("a?c", "aéc"));
        assert!(!m("a?c", "ac"));
        assert!(!m("a?c", "abbc"));
        assert!(m("??", "日本"));
        assert!(!m("?", ""));
    }

    #[test]
    fn everything_else_is_literal() {
        assert!(m("a.b", "a.b"));
        assert!(!m("a.b", "axb"));
        assert!(m("[x]{y}", "[x]{y}"));
        assert!(!m("[x]", "x"));
        assert!(m("{user}", "{user}"));
        assert!(m("exact", "exact"));
        assert!(!m("exact", "exact2"));
        assert!(!m("", "a"));
        assert!(m("", ""));
    }

    #[test]
    fn user_id_is_substituted() {
        let p = RoomPattern::parse("user:{userId}:*");
        assert!(p.matches("user:alice:inbox", Some("alice")));
        assert!(p.matches("user:alice:", Some("alice")));
        assert!(!p.matches("user:bob:inbox", Some("alice")));
        assert!(!p.matches("user:alice", Some("alice")));
        assert_eq!(p.as_str(), "user:{userId}:*");
        let twice = RoomPattern::parse("dm:{userId}:{userId}");
        assert!(twice.matches("dm:a:a", Some("a")));
        assert!(!twice.matches("dm:a:b", Some("a")));
    }

    #[test]
    fn user_id_patterns_never_match_without_a_user_id() {
        let p = RoomPattern::parse("user:{userId}:*");
        assert!(!p.matches("user::inbox", None));
        assert!(!p.matches("user::inbox", Some("")));
        assert!(!p.matches("user:{userId}:inbox", None));
        // Patterns without the placeholder do not care.
        assert!(RoomPattern::parse("public:*").matches("public:x", None));
    }

    #[test]
    fn user_id_with_glob_characters_matches_literally() {
        let p = RoomPattern::parse("user:{userId}");
        assert!(p.matches("user:*", Some("*")));
        assert!(!p.matches("user:alice", Some("*")));
        assert!(!p.matches("user:", Some("*")));
        assert!(p.matches("user:a?c", Some("a?c")));
        assert!(!p.matches("user:abc", Some("a?c")));
        // ... while the pattern's own globs still work around it.
        let q = RoomPattern::parse("user:{userId}:*");
        assert!(q.matches("user:*:x", Some("*")));
        assert!(!q.matches("user:evil:x", Some("*")));
    }

    #[test]
    fn validator_adds_identity_patterns() {
        let v = GlobRoomValidator::from_list("public:*");
        let requested = strings(&[
            "public:a",
            "team:42:chat",
            "team:43:chat",
            "user:bob:x",
            "z",
        ]);
        let extra = strings(&["team:42:*", "user:{userId}:x"]);
        assert_eq!(
            v.allowed(Some("bob"), &requested, Some(&extra)),
            strings(&["public:a", "team:42:chat", "user:bob:x"])
        );
        assert_eq!(
            v.allowed(Some("bob"), &requested, None),
            strings(&["public:a"])
        );
        // No server patterns at all: only what the identity grants.
        let bare = GlobRoomValidator::new(Vec::new());
        assert_eq!(
            bare.allowed(Some("bob"), &requested, Some(&extra)),
            strings(&["team:42:chat", "user:bob:x"])
        );
        assert!(bare.allowed(Some("bob"), &requested, None).is_empty());
    }

    #[test]
    fn validator_without_user_id() {
        let v = GlobRoomValidator::from_list("public:*,user:{userId}:*");
        let requested = strings(&["public:a", "user::x", "user:anyone:x"]);
        let extra = strings(&["dm:{userId}", "open"]);
        assert_eq!(
            v.allowed(None, &requested, Some(&extra)),
            strings(&["public:a"])
        );
        assert_eq!(
            v.allowed(None, &strings(&["open", "dm:"]), Some(&extra)),
            strings(&["open"])
        );
        assert_eq!(
            v.allowed(Some("al"), &strings(&["user:al:x", "user:bo:x"]), None),
            strings(&["user:al:x"])
        );
    }

    #[test]
    fn result_keeps_request_order_and_drops_duplicates() {
        let v = GlobRoomValidator::from_list("*");
        let requested = strings(&["b", "a", "b", "c", "a", "b"]);
        assert_eq!(v.allowed(None, &requested, None), strings(&["b", "a", "c"]));
        let v = GlobRoomValidator::from_list("a,b");
        let requested = strings(&["x", "b", "x", "a", "b"]);
        assert_eq!(v.allowed(None, &requested, None), strings(&["b", "a"]));
    }

    #[test]
    fn pathological_pattern_completes_fast() {
        let pattern = format!("{}b", "a*".repeat(64));
        let room = "a".repeat(20_000);
        let started = Instant::now();
        assert!(!RoomPattern::parse(&pattern).matches(&room, None));
        let v = GlobRoomValidator::new(vec![pattern.clone(), "*a*a*a*a*a*a*a*a*c".to_owned()]);
        assert!(
            v.allowed(None, std::slice::from_ref(&room), None)
                .is_empty()
        );
        let mut hit = room.clone();
        hit.push('b');
        assert!(RoomPattern::parse(&pattern).matches(&hit, None));
        // Exponential backtracking would take astronomically long here; the
        // linear matcher needs a few milliseconds even in debug builds.
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
    }

    #[test]
    fn parse_patterns_splits_trims_and_drops_empties() {
        assert_eq!(
            parse_patterns(" public:* , ,user:{userId}:* ,,"),
            strings(&["public:*", "user:{userId}:*"])
        );
        assert!(parse_patterns("").is_empty());
        assert!(parse_patterns(" , ").is_empty());
        let v = GlobRoomValidator::new(strings(&["", "a"]));
        assert_eq!(v.patterns().len(), 1);
    }

    #[test]
    fn room_validator_trait_is_ready_immediately() {
        let v = GlobRoomValidator::from_list("public:*,user:{userId}:*");
        let mut fut = v.allowed_rooms(JoinRequest {
            client_id: "c".to_owned(),
            user_id: Some("u1".to_owned()),
            rooms: strings(&["user:u1:a", "private", "public:x", "user:u2:a"]),
            room_patterns: Some(strings(&["private"])),
        });
        assert_eq!(
            poll_now(&mut fut),
            Poll::Ready(strings(&["user:u1:a", "private", "public:x"]))
        );
    }
}
