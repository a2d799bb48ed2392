//! Tests of the policy format and of name resolution.

use super::*;

fn set(v: &[&str]) -> Option<BTreeSet<String>> {
    Some(v.iter().map(|s| (*s).to_string()).collect())
}

fn err(text: &str) -> PolicyError {
    parse_policy(text).expect_err(text)
}

#[test]
fn every_identity_kind_and_role_parses_in_order() {
    let p = parse_policy(
        "rules:\n\
         - uid: 1000\n  role: tenant\n  namespaces: [a, b]\n\
         - user: alice\n  role: viewer\n\
         - gid: 50\n  role: viewer\n  namespaces: [a]\n  patterns: [hello]\n\
         - group: ops\n  role: admin\n\
         - cert_cn: client-1\n  role: tenant\n  namespaces: [c]\n  patterns: [p1, p2]\n\
         - cert_san: spiffe://x/y\n  role: admin\n",
    )
    .unwrap();
    let who: Vec<&Who> = p.rules.iter().map(|r| &r.who).collect();
    assert_eq!(
        who,
        [
            &Who::Uid(1000),
            &Who::User("alice".into()),
            &Who::Gid(50),
            &Who::Group("ops".into()),
            &Who::CertCn("client-1".into()),
            &Who::CertSan("spiffe://x/y".into()),
        ]
    );
    assert_eq!(
        p.rules[0].role,
        Role::Tenant(Limits {
            namespaces: set(&["a", "b"]),
            patterns: None
        })
    );
    assert_eq!(p.rules[1].role, Role::Viewer(Limits::default()));
    assert_eq!(
        p.rules[2].role,
        Role::Viewer(Limits {
            namespaces: set(&["a"]),
            patterns: set(&["hello"])
        })
    );
    assert_eq!(p.rules[3].role, Role::Admin);
    let lines: Vec<u64> = p.rules.iter().map(|r| r.line).collect();
    assert_eq!(lines, [2, 5, 7, 11, 13, 17]);
}

#[test]
fn an_empty_rule_list_is_a_policy_that_matches_nobody() {
    assert!(parse_policy("rules: []\n").unwrap().rules.is_empty());
}

#[test]
fn a_rule_names_exactly_one_identity() {
    let e = err("rules:\n  - role: admin\n");
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("found: none"), "{e}");
    let e =
        err("rules:\n  - uid: 1\n    role: admin\n  - uid: 2\n    user: bob\n    role: admin\n");
    assert_eq!(e.line, Some(4));
    assert!(e.message.contains("found: uid, user"), "{e}");
}

#[test]
fn roles_take_the_namespaces_they_need_and_no_others() {
    let e = err("rules:\n  - uid: 1\n    role: tenant\n");
    assert!(e.message.contains("namespace"), "{e}");
    let e = err("rules:\n  - uid: 1\n    role: tenant\n    namespaces: []\n");
    assert!(e.message.contains("at least one"), "{e}");
    let e = err("rules:\n  - uid: 1\n    role: admin\n    namespaces: [a]\n");
    assert!(e.message.contains("admin takes no"), "{e}");
    let e = err("rules:\n  - uid: 1\n    role: root\n");
    assert_eq!(e.line, Some(3));
    assert!(e.message.contains("role"), "{e}");
}

#[test]
fn unknown_keys_wrong_types_and_bad_names_are_refused_with_their_line() {
    let e = err("rules:\n  - uid: 1\n    role: admin\n    colour: red\n");
    assert_eq!(e.line, Some(4));
    assert!(e.message.contains("colour"), "{e}");
    let e = err("rules: []\nextra: 1\n");
    assert!(e.message.contains("extra"), "{e}");
    for bad_uid in ["-1", "4294967296", "alice", "1.5"] {
        let e = err(&format!("rules:\n  - uid: {bad_uid}\n    role: admin\n"));
        assert_eq!(e.line, Some(2), "{bad_uid}: {e}");
    }
    let e =
        err("rules:\n  - uid: 1\n    role: tenant\n    namespaces:\n      - a\n      - 'b:c'\n");
    assert_eq!(e.line, Some(6));
    assert!(e.message.contains("b:c"), "{e}");
    let e = err("rules:\n  - uid: 1\n    role: viewer\n    patterns: [Hello]\n");
    assert!(e.message.contains("Hello"), "{e}");
    let e = err("rules:\n  - user: ''\n    role: admin\n");
    assert!(e.message.contains("user"), "{e}");
    for empty in ["", "# nothing\n", "\n  \n"] {
        let e = err(empty);
        assert!(e.message.contains("empty"), "{e}");
    }
    assert!(err("---\n").line.is_some());
    assert!(err("rules: {}\n").line.is_some());
    assert!(err(": : :\n").line.is_some());
}

#[test]
fn the_file_is_bounded() {
    let mut text = String::from("rules:\n");
    for i in 0..=MAX_RULES {
        text.push_str(&format!("  - uid: {i}\n    role: admin\n"));
    }
    let e = err(&text);
    assert!(e.message.contains("more than 1000 rules"), "{e}");
    assert_eq!(e.line, Some(2 + 2 * MAX_RULES as u64));
    let many: Vec<String> = (0..=MAX_NAMES).map(|i| format!("n{i}")).collect();
    let e = err(&format!(
        "rules:\n  - uid: 1\n    role: tenant\n    namespaces: [{}]\n",
        many.join(", ")
    ));
    assert!(e.message.contains("more than 1000 names"), "{e}");
    let long = "x".repeat(MAX_TEXT + 1);
    let e = err(&format!("rules:\n  - cert_cn: {long}\n    role: admin\n"));
    assert!(e.message.contains("cert_cn"), "{e}");
}

#[test]
fn names_resolve_to_ids_and_unknown_names_are_errors() {
    let p = parse_policy(
        "rules:\n  - user: alice\n    role: admin\n  - group: ops\n    role: viewer\n  - uid: 5\n    role: admin\n",
    )
    .unwrap();
    let users = |n: &str| Ok((n == "alice").then_some(1000));
    let groups = |n: &str| Ok((n == "ops").then_some(20));
    let r = p.clone().resolve(users, groups).unwrap();
    let who: Vec<&Principal> = r.rules.iter().map(|r| &r.who).collect();
    assert_eq!(
        who,
        [
            &Principal::Uid(1000),
            &Principal::Gid(20),
            &Principal::Uid(5)
        ]
    );
    let e = p.clone().resolve(|_| Ok(None), groups).unwrap_err();
    assert_eq!(e.line, Some(2));
    assert!(e.message.contains("no user \"alice\""), "{e}");
    let e = p.resolve(users, |_| Err(nix::Error::EIO)).unwrap_err();
    assert_eq!(e.line, Some(4));
    assert!(e.message.contains("cannot look up \"ops\""), "{e}");
}

#[test]
fn root_resolves_on_the_system() {
    let p =
        parse_policy("rules:\n  - user: root\n    role: admin\n  - group: root\n    role: admin\n")
            .unwrap()
            .resolve_on_system()
            .unwrap();
    assert_eq!(p.rules[0].who, Principal::Uid(0));
    assert_eq!(p.rules[1].who, Principal::Gid(0));
}

#[test]
fn errors_name_the_file_once_loaded() {
    let e = err("rules:\n  - uid: 1\n    role: admin\n    x: 1\n").in_file("/etc/prism/authz.yaml");
    assert!(
        e.to_string().starts_with("/etc/prism/authz.yaml:4: "),
        "{e}"
    );
}

#[test]
fn the_readmes_example_is_a_valid_policy() {
    let readme = include_str!("../../README.md");
    let at = readme
        .find("**With `--authz FILE`**")
        .expect("the README's policy section");
    let start = at + readme[at..].find("```yaml\n").expect("a yaml block") + "```yaml\n".len();
    let end = start + readme[start..].find("```").expect("the block ends");
    let p = parse_policy(&readme[start..end]).unwrap();
    assert_eq!(p.rules.len(), 4);
    assert_eq!(p.rules[0].who, Who::Uid(0));
}

#[test]
fn a_file_is_empty_only_as_yaml_reads_it() {
    // Found by the authz_policy fuzz target: a lone CR ends a line (the
    // file below is `rules: []` after a comment, not a comment), and only
    // space and tab are blank to YAML (a no-break space is a scalar).
    let p = parse_policy("# refuse all\rrules: []\r").unwrap();
    assert!(p.rules.is_empty());
    let p = parse_policy("# a\rrules:\r  - uid: 0\r    role: admin\r").unwrap();
    assert_eq!(p.rules.len(), 1);
    assert_eq!(p.rules[0].line, 3);
    let e = err("\u{a0}\n");
    assert!(!e.message.contains("empty"), "{e}");
    for empty in ["\t\n", "# a\r# b\r", " \r\n#\r"] {
        let e = err(empty);
        assert!(e.message.contains("empty"), "{empty:?}: {e}");
    }
}
