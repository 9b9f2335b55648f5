use super::kubernetes::QUANTITY;
use super::quantity::MAX_NANOS;
use super::*;

const NANO: i128 = 1_000_000_000;

#[test]
fn quantities_parse_to_nano_units() {
    for (text, nanos) in [
        ("0", 0),
        ("2", 2 * NANO),
        ("+2", 2 * NANO),
        ("500m", NANO / 2),
        ("0.5", NANO / 2),
        (".5", NANO / 2),
        ("5.", 5 * NANO),
        ("1.5Gi", 1_610_612_736 * NANO),
        ("1536Mi", 1_610_612_736 * NANO),
        ("1Ki", 1024 * NANO),
        ("1k", 1000 * NANO),
        ("1e3", 1000 * NANO),
        ("1E3", 1000 * NANO),
        ("1E", 1_000_000_000_000_000_000 * NANO),
        ("1e-3", NANO / 1000),
        ("250u", 250_000),
        ("7n", 7),
        ("-1", -NANO),
        ("0001.000", NANO),
    ] {
        assert_eq!(parse_quantity(text), Some(nanos), "{text}");
    }
}

#[test]
fn sub_nano_fractions_round_up_and_huge_values_are_capped() {
    assert_eq!(parse_quantity("0.1n"), Some(1));
    assert_eq!(parse_quantity("1.0000000001"), Some(NANO + 1));
    assert_eq!(parse_quantity("1e-30"), Some(1));
    assert_eq!(parse_quantity("9223372036854775807"), Some(MAX_NANOS));
    assert_eq!(parse_quantity("100Ei"), Some(MAX_NANOS));
    assert_eq!(parse_quantity("1e99"), Some(MAX_NANOS));
    assert_eq!(
        parse_quantity("0.00000000012345678901234567890123456789012345"),
        Some(1)
    );
    assert_eq!(
        parse_quantity("99999999999999999999999999999999999999999"),
        Some(MAX_NANOS)
    );
}

#[test]
fn non_quantities_are_refused() {
    for text in [
        "",
        "-",
        "+",
        ".",
        "1..2",
        "1.2.3",
        "Gi",
        "1GB",
        "1g",
        "1e",
        "1e+",
        "1e1.5",
        "1 Gi",
        "1Gi ",
        "0x10",
        "1K",
        "1mi",
        "--1",
        "1e100",
        "1e4294967296",
        "1E-100",
        "1e+007",
    ] {
        assert_eq!(parse_quantity(text), None, "{text:?}");
    }
}

#[test]
fn the_schema_pattern_and_the_parser_agree() {
    for text in [
        "2",
        "500m",
        "1.5Gi",
        ".5",
        "5.",
        "1e3",
        "1E",
        "1e-3",
        "+1",
        "1e1.5",
        "1GB",
        "1e",
        "-1",
        "1K",
        "Gi",
        "",
        "1e99",
        "1E-99",
        "1e100",
        "1e4294967296",
    ] {
        let by_parser = !text.starts_with('-') && parse_quantity(text).is_some();
        assert_eq!(QUANTITY.is_match(text), by_parser, "{text:?}");
    }
}

#[test]
fn git_url_problems_are_named() {
    for (url, problem) in [
        ("-oProxyCommand=x@host:repo.git", "must not start with '-'"),
        ("git@-oProxyCommand=x:repo.git", "must not start with '-'"),
        (
            "ssh://-oProxyCommand=x@host/repo.git",
            "must not start with '-'",
        ),
        ("ssh://git@-host/repo.git", "must not start with '-'"),
        ("https://-host/repo.git", "must not start with '-'"),
        ("ssh://%2doProxyCommand=x@host/repo", "must not contain '%'"),
        ("git@host%2d:repo", "must not contain '%'"),
        ("ssh://host/-oProxyCommand=x", "path of an ssh://"),
        ("git@host:-oProxyCommand=x", "path of an ssh://"),
        ("https://host/re\u{a0}po", "printable ASCII"),
        ("git@host:re\u{2028}po", "printable ASCII"),
        ("/srv/repo.git", "is not a git URL"),
        ("https://host%2d/repo.git", "is not a git URL"),
    ] {
        assert!(!GIT_URL.is_match(url), "{url:?}");
        assert!(git_url_problem(url).contains(problem), "{url:?}");
    }
}
