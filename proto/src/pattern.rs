//! OpenSSH wildcard patterns and pattern lists, the one matcher behind `allowed_signers`
//! principals and namespaces ([`crate::sign`]) and `known_hosts` host names (the controller).
//!
//! A pattern uses `*` (any run of characters) and `?` (any one character); a pattern list is
//! comma-separated and a `!` in front of a pattern negates it: a negated match refuses the
//! value whatever else matched, as in OpenSSH's `match_pattern_list`.

/// Whether letter case matters: OpenSSH compares host names case-insensitively, principals
/// and namespaces exactly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Case {
    Sensitive,
    Insensitive,
}

/// `value` is matched by the comma-separated pattern `list`: by at least one pattern and by
/// no negated one. Blanks around a pattern are ignored.
pub fn matches_list(list: &str, value: &str, case: Case) -> bool {
    let mut matched = false;
    for pattern in list.split(',').map(str::trim) {
        if let Some(negated) = pattern.strip_prefix('!') {
            if matches(negated, value, case) {
                return false;
            }
        } else if matches(pattern, value, case) {
            matched = true;
        }
    }
    matched
}

/// One pattern against `value`: `*` matches any run of characters, `?` any one character.
pub fn matches(pattern: &str, value: &str, case: Case) -> bool {
    match case {
        Case::Sensitive => wildcard(pattern, value),
        Case::Insensitive => wildcard(&pattern.to_lowercase(), &value.to_lowercase()),
    }
}

fn wildcard(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    // Iterative matching that backtracks only to the last `*`: linear space and no recursion,
    // whatever a peer or a hand-edited file puts in the pattern or the value.
    let (mut pi, mut vi) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while vi < v.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == v[vi]) {
            pi += 1;
            vi += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, vi));
            pi += 1;
        } else if let Some((sp, sv)) = star {
            pi = sp + 1;
            vi = sv + 1;
            star = Some((sp, sv + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_patterns() {
        use Case::*;
        for (p, v, case, want) in [
            ("*", "x", Sensitive, true),
            ("*", "", Sensitive, true),
            ("", "", Sensitive, true),
            ("", "x", Sensitive, false),
            ("a*c", "abbbc", Sensitive, true),
            ("a*c", "abbb", Sensitive, false),
            ("a?c", "abc", Sensitive, true),
            ("a?c*", "abcdef", Sensitive, true),
            ("a?c", "abcd", Sensitive, false),
            ("*/acme/*", "r.io/acme/web", Sensitive, true),
            ("*.example", "x.y.example", Sensitive, true),
            ("[h]:22*", "[h]:2222", Sensitive, true),
            ("*a*a*a*a*b", &"a".repeat(200), Sensitive, false),
            ("Host.Example", "host.example", Sensitive, false),
            ("Host.Example", "host.EXAMPLE", Insensitive, true),
            ("*.EXAMPLE", "a.example", Insensitive, true),
        ] {
            assert_eq!(matches(p, v, case), want, "{p:?} {v:?} {case:?}");
        }
    }

    #[test]
    fn lists_follow_openssh() {
        use Case::*;
        for (list, v, case, want) in [
            ("deployctl-order", "deployctl-order", Sensitive, true),
            ("git,deployctl-*", "deployctl-order", Sensitive, true),
            ("git, deployctl-order", "deployctl-order", Sensitive, true),
            ("*", "deployctl-order", Sensitive, true),
            ("git,file", "deployctl-order", Sensitive, false),
            ("*,!deployctl-order", "deployctl-order", Sensitive, false),
            ("!deployctl-order,*", "deployctl-order", Sensitive, false),
            ("!other", "deployctl-order", Sensitive, false),
            (
                "*.wild.example,!bad.wild.example",
                "a.wild.example",
                Insensitive,
                true,
            ),
            (
                "*.wild.example,!bad.wild.example",
                "BAD.wild.example",
                Insensitive,
                false,
            ),
            ("", "x", Sensitive, false),
        ] {
            assert_eq!(matches_list(list, v, case), want, "{list:?} {v:?} {case:?}");
        }
    }
}
