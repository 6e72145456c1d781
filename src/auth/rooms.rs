//! Glob room allow-lists (`--room-allow 'public:*,user:{userId}:*'`): pattern
//! parsing, `{userId}` substitution and bounded-time wildcard matching, plus
//! the [`GlobRoomValidator`] that combines server-wide patterns with the
//! per-client ones an authenticator granted (the JWT `rooms` claim, the auth
//! webhook's `rooms` answer). Every pattern, whatever its source, is matched
//! by [`RoomPattern::matches`] (the validator uses the same code path).
//!
//! Pattern syntax. A room name is read as `:`-separated segments.
//! - `*` matches any run of characters *within one segment*: zero or more
//!   characters, none of them `:`. So `user:alice:*` matches `user:alice:inbox`
//!   and `user:alice:` but not `user:alice:x:inbox`.
//! - `?` matches exactly one character other than `:`.
//! - `**` (two or more stars in a row) matches any run of characters, `:`
//!   included, possibly empty: `user:alice:**` matches `user:alice:a:b`, and
//!   `**` alone matches every room.
//! - `{userId}` is the client's user id taken literally (glob characters in a
//!   user id match only themselves). A pattern that mentions `{userId}` never
//!   matches for a client without a user id, with an empty one (which would
//!   turn `user:{userId}:*` into the shared `user::*`), or with one that
//!   contains `:` (user `alice:x` would otherwise own `user:alice:x:inbox`,
//!   which `user:{userId}:**` also grants to user `alice`).
//! - Everything else is literal; there is no escaping.
//!
//! Isolation: when every `{userId}` fills a whole segment and no `**` comes
//! before it (e.g. `user:{userId}:*`, `{userId}:**`, `dm:{userId}:{userId}`),
//! two different users can never match the same room through the pattern
//! ([`RoomPattern::isolates_user_id`]; the server warns at start about
//! `--room-allow` patterns that do not).
//!
//! Cost: matching simulates the pattern as a set of live positions over the
//! room's characters, O(pattern × room) with no backtracking; rooms are at
//! most [`crate::proto::message::MAX_ROOM_NAME_LEN`] long on the wire, and
//! patterns longer than [`MAX_PATTERN_LEN`] characters never match.

use std::collections::HashSet;

use super::{BoxFuture, JoinRequest, RoomValidator, ready};

const USER_ID_PLACEHOLDER: &str = "{userId}";

/// Longest pattern, in characters as written, that can match anything;
/// longer ones (a bloated token claim) match nothing, keeping a join's cost
/// bounded. `--room-allow` refuses them at start.
pub const MAX_PATTERN_LEN: usize = 1024;

/// Splits a comma-separated pattern list, trimming blanks and dropping empties.
pub fn parse_patterns(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    Lit(char),
    One,
    Star,
    AnyStar,
    UserId,
}

/// What the matcher runs on, after `{userId}` has been expanded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tok {
    Lit(char),
    /// `?`: one non-`:` character.
    One,
    /// `*`: zero or more non-`:` characters.
    Star,
    /// `**`: zero or more characters of any kind.
    AnyStar,
}

/// One parsed room pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoomPattern {
    source: String,
    parts: Vec<Part>,
    uses_user_id: bool,
    too_long: bool,
    /// What a pattern without `{userId}` matches with, built once.
    fixed: Option<Vec<Tok>>,
}

impl RoomPattern {
    /// Parses a pattern; every string is a valid pattern (one longer than
    /// [`MAX_PATTERN_LEN`] characters simply never matches).
    pub fn parse(pattern: &str) -> Self {
        let too_long = pattern.chars().count() > MAX_PATTERN_LEN;
        let mut parts = Vec::new();
        let mut rest = if too_long { "" } else { pattern };
        while let Some(c) = rest.chars().next() {
            if let Some(after) = rest.strip_prefix(USER_ID_PLACEHOLDER) {
                parts.push(Part::UserId);
                rest = after;
                continue;
            }
            if c == '*' {
                let run = rest.len() - rest.trim_start_matches('*').len();
                parts.push(if run >= 2 { Part::AnyStar } else { Part::Star });
                rest = &rest[run..];
                continue;
            }
            parts.push(if c == '?' { Part::One } else { Part::Lit(c) });
            rest = &rest[c.len_utf8()..];
        }
        let uses_user_id = parts.contains(&Part::UserId);
        let mut p = Self {
            source: pattern.to_owned(),
            parts,
            uses_user_id,
            too_long,
            fixed: None,
        };
        if !uses_user_id {
            p.fixed = p.build(None);
        }
        p
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

    /// [`RoomPattern::build`], without building again what does not
    /// depend on the user id.
    fn expand(&self, user_id: Option<&str>) -> Option<std::borrow::Cow<'_, [Tok]>> {
        match &self.fixed {
            Some(toks) => Some(std::borrow::Cow::Borrowed(toks)),
            None => self.build(user_id).map(std::borrow::Cow::Owned),
        }
    }

    /// Whether the pattern mentions `{userId}`.
    pub fn uses_user_id(&self) -> bool {
        self.uses_user_id
    }

    /// Whether the pattern gives each user rooms of their own: it mentions
    /// `{userId}`, every `{userId}` is a whole `:`-segment and no `**`
    /// precedes the first one, so the user id's segment sits at a fixed
    /// position in the room name and two different user ids can never match
    /// the same room. False for patterns without `{userId}` (every client
    /// matches the same rooms).
    pub fn isolates_user_id(&self) -> bool {
        let Some(first) = self.parts.iter().position(|p| *p == Part::UserId) else {
            return false;
        };
        if self.parts[..first].contains(&Part::AnyStar) {
            return false;
        }
        self.parts.iter().enumerate().all(|(i, p)| {
            *p != Part::UserId
                || ((i == 0 || self.parts[i - 1] == Part::Lit(':'))
                    && matches!(self.parts.get(i + 1), None | Some(Part::Lit(':'))))
        })
    }

    /// Substitutes the user id as literal characters; `None` when the pattern
    /// can match nothing for this client (it needs a user id the client does
    /// not have, has an empty one or one containing `:`; or it is too long).
    fn build(&self, user_id: Option<&str>) -> Option<Vec<Tok>> {
        if self.too_long {
            return None;
        }
        let user_id = match user_id {
            Some(u) if !u.is_empty() && !u.contains(':') => u,
            _ if self.uses_user_id => return None,
            _ => "",
        };
        let mut toks = Vec::with_capacity(self.parts.len());
        for part in &self.parts {
            match *part {
                Part::Lit(c) => toks.push(Tok::Lit(c)),
                Part::One => toks.push(Tok::One),
                Part::Star => toks.push(Tok::Star),
                Part::AnyStar => toks.push(Tok::AnyStar),
                Part::UserId => toks.extend(user_id.chars().map(Tok::Lit)),
            }
        }
        Some(toks)
    }
}

/// Marks, in `live`, every position reachable from a live one by letting a
/// star match nothing (in increasing order, so chains of stars close too).
fn close_stars(pat: &[Tok], live: &mut [bool]) {
    for (i, tok) in pat.iter().enumerate() {
        if live[i] && matches!(tok, Tok::Star | Tok::AnyStar) {
            live[i + 1] = true;
        }
    }
}

/// Runs the pattern as a nondeterministic automaton: `live[i]` says
/// `pat[..i]` matches the text read so far. Each character advances every
/// live position once, so the cost is O(pattern × text) whatever the pattern,
/// with no backtracking to blow up.
fn glob_match(pat: &[Tok], text: &[char]) -> bool {
    if pat.iter().all(|t| matches!(t, Tok::Lit(_))) {
        return pat.len() == text.len() && pat.iter().zip(text).all(|(t, c)| *t == Tok::Lit(*c));
    }
    let n = pat.len();
    // On the stack for patterns of up to 63 tokens (most).
    let mut live: smallvec::SmallVec<[bool; 64]> = smallvec::smallvec![false; n + 1];
    let mut next: smallvec::SmallVec<[bool; 64]> = smallvec::smallvec![false; n + 1];
    live[0] = true;
    close_stars(pat, &mut live);
    for &c in text {
        next.fill(false);
        let mut any = false;
        for (i, tok) in pat.iter().enumerate() {
            if !live[i] {
                continue;
            }
            let target = match *tok {
                Tok::Lit(l) if l == c => i + 1,
                Tok::One if c != ':' => i + 1,
                Tok::Star if c != ':' => i,
                Tok::AnyStar => i,
                _ => continue,
            };
            next[target] = true;
            any = true;
        }
        if !any {
            return false;
        }
        close_stars(pat, &mut next);
        std::mem::swap(&mut live, &mut next);
    }
    live[n]
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
        // (Patterns without it are compiled already.)
        let compiled: smallvec::SmallVec<[std::borrow::Cow<'_, [Tok]>; 4]> = self
            .patterns
            .iter()
            .chain(&extra)
            .filter_map(|p| p.expand(user_id))
            .collect();

        // Duplicates: a scan of what was allowed for a few rooms, a set
        // for many.
        let mut seen: Option<HashSet<&str>> =
            (rooms.len() > 16).then(|| HashSet::with_capacity(rooms.len()));
        let mut allowed: Vec<String> = Vec::with_capacity(rooms.len());
        let mut text: Vec<char> = Vec::new();
        for room in rooms {
            let dup = match &seen {
                Some(set) => set.contains(room.as_str()),
                None => allowed.iter().any(|a| a == room),
            };
            if dup {
                continue;
            }
            text.clear();
            text.extend(room.chars());
            if compiled.iter().any(|toks| glob_match(toks, &text)) {
                if let Some(set) = &mut seen {
                    set.insert(room.as_str());
                }
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

    /// `pattern`, without a user id, matches each of `yes` and none of `no`.
    fn check(pattern: &str, yes: &[&str], no: &[&str]) {
        for room in yes {
            assert!(m(pattern, room), "{pattern} should match {room:?}");
        }
        for room in no {
            assert!(!m(pattern, room), "{pattern} should not match {room:?}");
        }
    }

    fn strings(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn readme_examples() {
        let u = |p: &str, room: &str, user: &str| RoomPattern::parse(p).matches(room, Some(user));
        assert!(m("public:*", "public:news") && m("public:*", "public:"));
        assert!(!m("public:*", "public:news:eu"));
        assert!(u("user:{userId}:*", "user:alice:inbox", "alice"));
        assert!(!u("user:{userId}:*", "user:alice:x:inbox", "alice"));
        assert!(!u("user:{userId}:*", "user:bob:inbox", "alice"));
        assert!(u("user:{userId}:**", "user:alice:inbox", "alice"));
        assert!(u("user:{userId}:**", "user:alice:a:b", "alice"));
        assert!(!u("user:{userId}:**", "user:bob:a", "alice"));
        assert!(m("game:??", "game:42"));
        assert!(!m("game:??", "game:4") && !m("game:??", "game::1"));
        assert!(m("**", "a:b:c") && m("**", "x"));
    }

    #[test]
    fn star_matches_within_one_segment_including_empty() {
        check(
            "public:*",
            &["public:", "public:news"],
            &[
                "public:a:b:c",
                "public:a:",
                "public",
                "publicx:a",
                "xpublic:a",
            ],
        );
        check("*", &["", "anything"], &["any:thing"]);
        check("*:*", &["a:b", ":"], &["a:b:c"]);
        check("a*b*c", &["abc", "a-b-b-c"], &["a-b-b-cd", "a:b:c"]);
        check("*:end", &["x:end"], &["x:y:end"]);
        check(
            "user:*:inbox",
            &["user:alice:inbox"],
            &["user:alice:x:inbox"],
        );
    }

    #[test]
    fn double_star_crosses_segments() {
        check("**", &["", "anything:at:all"], &[]);
        check("public:**", &["public:", "public:a:b:c"], &["public"]);
        check("a**b", &["ab", "a:x:b"], &[]);
        check("**:end", &["x:y:end", ":end"], &["end"]);
        check("a:**:z", &["a::z", "a:b:c:z"], &["a:z"]);
        // Three or more stars are the same as two.
        assert!(m("a***b", "a:b"));
        assert!(m("a****", "a:b:c"));
        // Mixed with single stars and `?`.
        assert!(m("*:**:?", "x:y:z:q"));
        assert!(!m("*:**:?", "x:y:z:qq"));
    }

    #[test]
    fn question_mark_matches_exactly_one_character_but_not_a_colon() {
        check("a?c", &["abc", "aéc"], &["a:c", "ac", "abbc"]);
        check("??", &["日本"], &[]);
        check("?", &[], &["", ":"]);
    }

    #[test]
    fn everything_else_is_literal() {
        check("a.b", &["a.b"], &["axb"]);
        check("[x]{y}", &["[x]{y}"], &[]);
        check("[x]", &[], &["x"]);
        check("{user}", &["{user}"], &[]);
        check("exact", &["exact"], &["exact2"]);
        check("", &[""], &["a"]);
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
        assert!(p.matches("user:**", Some("**")));
        assert!(!p.matches("user:a", Some("**")));
        // The placeholder's own text as a user id is literal too.
        assert!(p.matches("user:{userId}", Some("{userId}")));
        assert!(!p.matches("user:{userId}", Some("alice")));
        assert!(!p.matches("user:alice", Some("{userId}")));
        // ... while the pattern's own globs still work around it.
        let q = RoomPattern::parse("user:{userId}:*");
        assert!(q.matches("user:*:x", Some("*")));
        assert!(!q.matches("user:evil:x", Some("*")));
        assert!(!q.matches("user:*:x:y", Some("*")));
    }

    #[test]
    fn star_does_not_reach_into_another_users_rooms() {
        // Issue 12: with `user:{userId}:*`, alice could join the inbox of
        // user `alice:x`.
        let p = RoomPattern::parse("user:{userId}:*");
        assert!(p.matches("user:alice:inbox", Some("alice")));
        assert!(!p.matches("user:alice:x:inbox", Some("alice")));
        let deep = RoomPattern::parse("user:{userId}:**");
        assert!(deep.matches("user:alice:a:b", Some("alice")));
        assert!(deep.matches("user:alice:inbox", Some("alice")));
        assert!(!deep.matches("user:alicex:inbox", Some("alice")));
    }

    #[test]
    fn user_ids_with_a_colon_never_match_user_id_patterns() {
        for pattern in [
            "user:{userId}:*",
            "user:{userId}:**",
            "user:{userId}",
            "{userId}",
        ] {
            let p = RoomPattern::parse(pattern);
            for room in [
                "user:alice:x:inbox",
                "user:alice:x",
                "alice:x",
                "user:alice:x:",
            ] {
                assert!(!p.matches(room, Some("alice:x")), "{pattern} {room}");
                assert!(!p.matches(room, Some(":")), "{pattern} {room}");
            }
        }
        // Patterns without the placeholder do not look at the user id.
        assert!(RoomPattern::parse("public:*").matches("public:x", Some("a:b")));
        // So alice's `user:{userId}:**` rooms are alice's alone.
        let v = GlobRoomValidator::from_list("user:{userId}:**");
        let rooms = strings(&["user:alice:x:inbox", "user:alice:inbox"]);
        assert!(v.allowed(Some("alice:x"), &rooms, None).is_empty());
        assert_eq!(v.allowed(Some("alice"), &rooms, None), rooms);
    }

    #[test]
    fn isolation_is_detected() {
        for ok in [
            "user:{userId}:*",
            "user:{userId}",
            "{userId}:*",
            "{userId}",
            "chat:{userId}:**",
            "dm:{userId}:{userId}",
            "*:?:{userId}:**",
        ] {
            assert!(RoomPattern::parse(ok).isolates_user_id(), "{ok}");
            assert!(RoomPattern::parse(ok).uses_user_id(), "{ok}");
        }
        for shared in [
            "public:**",
            "**",
            "user:{userId}*",
            "user-{userId}:x",
            "**:{userId}",
            "a:**:{userId}:x",
            "{userId}{userId}",
            "user:{userId}?",
        ] {
            assert!(!RoomPattern::parse(shared).isolates_user_id(), "{shared}");
        }
    }

    #[test]
    fn overlong_patterns_never_match() {
        let long = format!("{}**", "a".repeat(MAX_PATTERN_LEN));
        assert!(!m(&long, &"a".repeat(MAX_PATTERN_LEN + 5)));
        let just = format!("{}**", "a".repeat(MAX_PATTERN_LEN - 2));
        assert!(m(&just, &"a".repeat(MAX_PATTERN_LEN + 5)));
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

    /// Past 16 requested rooms duplicates are found through a set: the
    /// same answer as the scan gives.
    #[test]
    fn many_rooms_keep_request_order_and_drop_duplicates() {
        let v = GlobRoomValidator::from_list("r:*,user:{userId}");
        let mut requested: Vec<String> = (0..30).map(|i| format!("r:{}", i % 12)).collect();
        requested.push("user:alice".into());
        requested.push("user:bob".into());
        requested.push("user:alice".into());
        let mut want: Vec<String> = (0..12).map(|i| format!("r:{i}")).collect();
        want.push("user:alice".into());
        assert_eq!(v.allowed(Some("alice"), &requested, None), want);
        assert_eq!(v.allowed(Some("alice"), &requested[..15], None), want[..12]);
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

    mod props {
        use super::super::*;
        use crate::fuzzing::{instantiate, room_pattern_reference};
        use proptest::prelude::*;

        /// Patterns whose `{userId}` fills one segment at a fixed position.
        const ISOLATING: &[&str] = &[
            "user:{userId}:*",
            "user:{userId}",
            "{userId}:*",
            "{userId}",
            "chat:{userId}:**",
            "{userId}:**",
            "dm:{userId}:{userId}",
            "*:?:{userId}:**",
        ];

        fn piece(u1: String, u2: String) -> impl Strategy<Value = String> {
            prop_oneof![
                Just(u1),
                Just(u2),
                Just(":".to_owned()),
                "[ab:*?{}]{0,3}",
                Just("{userId}".to_owned()),
            ]
        }

        /// Ids with every character that means something in a pattern.
        fn user_id() -> impl Strategy<Value = String> {
            prop_oneof![
                "[ab:*?{}]{1,4}",
                Just("{userId}".to_owned()),
                Just("*".to_owned()),
                Just("**".to_owned()),
                Just("a:b".to_owned()),
                Just("a".to_owned()),
            ]
        }

        /// Two distinct users and a room that is likely to match for one of
        /// them: the pattern's own instance for either, plus more pieces.
        fn case() -> impl Strategy<Value = (String, String, String, String)> {
            (0..ISOLATING.len(), user_id(), user_id())
                .prop_filter("distinct users", |(_, a, b)| a != b)
                .prop_flat_map(|(i, u1, u2)| {
                    let pattern = ISOLATING[i].to_owned();
                    let base = prop_oneof![
                        Just(instantiate(&pattern, &u1)),
                        Just(instantiate(&pattern, &u2)),
                        Just(String::new()),
                    ];
                    let pieces = proptest::collection::vec(piece(u1.clone(), u2.clone()), 0..5);
                    (Just(pattern), Just(u1), Just(u2), base, pieces)
                        .prop_map(|(p, u1, u2, base, pieces)| (p, u1, u2, base + &pieces.concat()))
                })
        }

        fn pattern() -> impl Strategy<Value = String> {
            proptest::collection::vec(
                prop_oneof![
                    Just("a"),
                    Just("b"),
                    Just(":"),
                    Just("*"),
                    Just("**"),
                    Just("?"),
                    Just("{userId}"),
                ],
                0..8,
            )
            .prop_map(|v| v.concat())
        }

        /// `{userId}` as a whole segment after segments without `**`, then
        /// anything (more `{userId}` segments, `**`).
        fn isolating_pattern() -> impl Strategy<Value = String> {
            // At most one star per prefix segment: `**` there would be
            // no single segment any more.
            let prefix = proptest::collection::vec("[ab?]{0,2}\\*?[ab?]{0,2}", 0..3);
            let suffix = proptest::collection::vec(
                prop_oneof![
                    "[ab*?]{0,3}",
                    Just("{userId}".to_owned()),
                    Just("**".to_owned())
                ],
                0..3,
            );
            (prefix, suffix).prop_map(|(mut segs, suffix)| {
                segs.push("{userId}".to_owned());
                segs.extend(suffix);
                segs.join(":")
            })
        }

        /// The pattern `p` does not let both `u1` and `u2` join `room`.
        fn not_shared(p: &str, room: &str, u1: &str, u2: &str) -> Result<(), TestCaseError> {
            let pat = RoomPattern::parse(p);
            prop_assert!(
                !(pat.matches(room, Some(u1)) && pat.matches(room, Some(u2))),
                "{} lets {:?} and {:?} both join {:?}",
                p,
                u1,
                u2,
                room
            );
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 2048, ..ProptestConfig::default() })]

            #[test]
            fn two_users_never_share_a_room((p, u1, u2, room) in case()) {
                let pat = RoomPattern::parse(&p);
                prop_assert!(pat.isolates_user_id());
                not_shared(&p, &room, &u1, &u2)?;
            }

            #[test]
            fn random_isolating_patterns_isolate(
                p in isolating_pattern(),
                u1 in user_id(),
                u2 in user_id(),
                tail in "[ab:*?]{0,4}",
            ) {
                prop_assume!(u1 != u2);
                prop_assert!(RoomPattern::parse(&p).isolates_user_id(), "{}", p);
                for room in [instantiate(&p, &u1) + &tail, instantiate(&p, &u2) + &tail] {
                    not_shared(&p, &room, &u1, &u2)?;
                }
            }

            #[test]
            fn matcher_agrees_with_the_reference(
                p in pattern(),
                room in "[ab:*?{}]{0,10}",
                user in proptest::option::of(user_id()),
            ) {
                let pat = RoomPattern::parse(&p);
                let inst = instantiate(&p, user.as_deref().unwrap_or("a"));
                for r in [room.as_str(), inst.as_str()] {
                    prop_assert_eq!(
                        pat.matches(r, user.as_deref()),
                        room_pattern_reference(&p, r, user.as_deref()),
                        "{} on {:?} for {:?}", p, r, user
                    );
                }
            }
        }
    }
}
