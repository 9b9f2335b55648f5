use super::*;

const PEM: &str = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----\n";

fn host(s: &str) -> RegistryHost {
    s.parse().unwrap()
}

#[test]
fn registry_hosts_as_references_name_them() {
    for ok in [
        "registry.internal",
        "registry.internal:5000",
        "127.0.0.1:5000",
        "localhost",
        "[::1]:5000",
        "[fd00::1]",
        "a-b.c",
    ] {
        assert_eq!(host(ok).as_str(), ok);
    }
}

#[test]
fn a_host_that_could_break_out_of_toml_or_a_path_is_refused() {
    for bad in [
        "",
        "reg\"istry",
        "registry\"]\n[registry.\"evil\"]\nhttp = true",
        "registry\ninsecure = true",
        "registry\\x",
        "../../etc",
        "registry/path",
        "a..b",
        ".hidden",
        "-lead",
        "registry:0",
        "registry:65536",
        "registry:50a",
        "registry:",
        "a:b:c",
        "[::1",
        "[::1]x",
        "[zz::1]",
        "reg istry",
        "$(touch x)",
        "reg\u{0}istry",
    ] {
        let err = bad.parse::<RegistryHost>().unwrap_err().to_string();
        assert!(err.contains("is not a registry host"), "{bad:?}: {err}");
    }
    assert!("x".repeat(262).parse::<RegistryHost>().is_err());
}

#[test]
fn config_map_keys_write_the_port_colon_as_underscore() {
    assert_eq!(
        host("registry.internal:5000").config_map_key().as_deref(),
        Some("registry.internal_5000")
    );
    assert_eq!(
        host("registry.internal").config_map_key().as_deref(),
        Some("registry.internal")
    );
    assert_eq!(host("[::1]:5000").config_map_key(), None);
    for key in [
        "registry.internal_5000",
        "registry.internal",
        "127.0.0.1_443",
    ] {
        let back = RegistryHost::from_config_map_key(key).unwrap();
        assert_eq!(back.config_map_key().as_deref(), Some(key));
    }
    assert_eq!(
        RegistryHost::from_config_map_key("registry.internal_5000")
            .unwrap()
            .as_str(),
        "registry.internal:5000"
    );
    for bad in [
        "a_b_5000",
        "registry_http",
        "_5000",
        "..data",
        "ca.crt",
        "bundle.pem",
    ] {
        assert!(
            RegistryHost::from_config_map_key(bad).is_err(),
            "{bad} was taken"
        );
    }
    let err = RegistryHost::from_config_map_key("ca.crt")
        .unwrap_err()
        .to_string();
    assert!(err.contains("registry.internal_5000"), "{err}");
}

#[test]
fn nothing_configured_renders_no_entry() {
    let trust = RegistryTrust::default();
    assert!(trust.is_empty());
    assert!(!trust.registries_conf().contains("[[registry]]"));
    assert!(
        !trust
            .buildkitd_toml(|_| unreachable!())
            .contains("[registry")
    );
}

#[test]
fn registries_conf_lists_each_plain_http_registry_once_sorted() {
    let trust = RegistryTrust::new(
        [
            host("b.internal:5000"),
            host("a.internal"),
            host("b.internal:5000"),
        ],
        [(host("ca.internal"), PEM.to_string())],
    )
    .unwrap();
    assert_eq!(
        trust.registries_conf(),
        "# Written by archforge from the operator's registry trust settings.\n\
         \n[[registry]]\nlocation = \"a.internal\"\ninsecure = true\n\
         \n[[registry]]\nlocation = \"b.internal:5000\"\ninsecure = true\n"
    );
}

#[test]
fn buildkitd_toml_has_one_table_per_host() {
    let trust = RegistryTrust::new(
        [host("both.internal:5000"), host("plain.internal")],
        [
            (host("both.internal:5000"), PEM.to_string()),
            (host("tls.internal"), PEM.to_string()),
        ],
    )
    .unwrap();
    let toml = trust.buildkitd_toml(|h| format!("/certs/{h}/ca.crt"));
    assert_eq!(
        toml,
        "# Written by archforge from the operator's registry trust settings.\n\
         \n[registry.\"both.internal:5000\"]\n  http = true\n  insecure = true\n  ca = [\"/certs/both.internal:5000/ca.crt\"]\n\
         \n[registry.\"plain.internal\"]\n  http = true\n  insecure = true\n\
         \n[registry.\"tls.internal\"]\n  ca = [\"/certs/tls.internal/ca.crt\"]\n"
    );
}

#[test]
fn certificates_are_pem_text_and_bounded() {
    let not_pem = RegistryTrust::new([], [(host("r.internal"), "hello".to_string())]);
    assert!(matches!(not_pem, Err(TrustError::NotPem { .. })));
    let binary = format!("{PEM}\u{0}\u{7}");
    let binary = RegistryTrust::new([], [(host("r.internal"), binary)]);
    assert!(matches!(binary, Err(TrustError::NotPem { .. })));

    let twice = RegistryTrust::new(
        [],
        [
            (host("r.internal"), PEM.to_string()),
            (host("r.internal"), PEM.to_string()),
        ],
    );
    assert!(matches!(twice, Err(TrustError::DuplicateHost { .. })));

    // Many hosts within the limit are fine; one byte over it is refused with the numbers.
    let big = format!("{PEM}{}", "A".repeat(MAX_CA_BYTES / 2 - PEM.len()));
    let two = |second: String| {
        RegistryTrust::new(
            [],
            [
                (host("a.internal"), big.clone()),
                (host("b.internal"), second),
            ],
        )
    };
    assert!(two(big.clone()).is_ok());
    let err = two(format!("{big}A")).unwrap_err().to_string();
    assert!(
        err.contains(&format!("{} bytes", MAX_CA_BYTES + 1)) && err.contains("65536"),
        "{err}"
    );

    let many = (0..=MAX_HOSTS).map(|i| host(&format!("r{i}.internal")));
    assert!(matches!(
        RegistryTrust::new(many, []),
        Err(TrustError::TooManyHosts { .. })
    ));
}
