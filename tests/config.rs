//! Config loading as a user meets it: every mistake is an error naming the file, the line, the
//! key, what was expected and what was found; the environment can override and fill in values.

use std::path::Path;
use std::process::Command;

use sluice::config::{Config, ConfigErrors};
use sluice::sinks::SinkSettings;

const GOOD: &str = r#"
data_dir = "./data"

[admin]
listen = "127.0.0.1:9600"

[sources.api]
type = "http"
listen = "127.0.0.1:8080"
max_body_bytes = "64KiB"

[sinks.upstream]
type = "http_forward"
inputs = ["api"]
url = "http://127.0.0.1:5000"
request_timeout = "250ms"
queue = { type = "memory", max_events = 10, max_bytes = "10GiB", when_full = "drop_oldest" }
retry = { max_attempts = 3, initial_backoff = "100ms", max_backoff = "5m" }
"#;

fn parse_with(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigErrors> {
    let vars: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup_vars = vars.clone();
    Config::parse(Path::new("sluice.toml"), text, vars, &move |name| {
        lookup_vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
    })
}

fn errors(text: &str) -> String {
    match parse_with(text, &[]) {
        Ok(_) => panic!("expected errors for:\n{text}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn a_good_file_loads_with_units_read() {
    let config = parse_with(GOOD, &[]).expect("valid");
    let sink = &config.sinks[0];
    assert_eq!(sink.queue.max_bytes().0, 10 << 30);
    assert_eq!(sink.delivery.retry.max_backoff.0.as_secs(), 300);
    assert_eq!(sink.delivery.concurrency, 64, "http_forward's default");
    let SinkSettings::HttpForward(forward) = &sink.settings else {
        panic!("kind")
    };
    assert_eq!(forward.request_timeout.0.as_millis(), 250);
}

#[test]
fn a_typo_in_a_key_names_the_line_and_suggests_the_key() {
    let text = GOOD.replace("request_timeout = \"250ms\"", "request_timout = \"250ms\"");
    let message = errors(&text);
    assert!(
        message.contains(
            "sluice.toml:16: sinks.upstream.request_timout: unknown key `request_timout`"
        ),
        "{message}"
    );
    assert!(
        message.contains("did you mean `request_timeout`?"),
        "{message}"
    );
}

#[test]
fn a_typo_in_a_common_sink_key_is_found_too() {
    let message = errors(&GOOD.replace("inputs = [\"api\"]", "inputs = [\"api\"]\nconcurency = 4"));
    assert!(
        message.contains("unknown key `concurency`")
            && message.contains("did you mean `concurrency`?"),
        "{message}"
    );
}

#[test]
fn a_wrong_type_says_what_was_expected_and_found() {
    let message = errors(&GOOD.replace("max_body_bytes = \"64KiB\"", "max_body_bytes = \"lots\""));
    assert!(
        message.contains("sluice.toml:10: sources.api.max_body_bytes: expected a size"),
        "{message}"
    );
    assert!(message.contains("found \"lots\""), "{message}");
    let message = errors(&GOOD.replace("request_timeout = \"250ms\"", "request_timeout = 250"));
    assert!(
        message.contains("sinks.upstream.request_timeout"),
        "{message}"
    );
    let message = errors(&GOOD.replace("when_full = \"drop_oldest\"", "when_full = \"panic\""));
    assert!(
        message.contains("sinks.upstream.queue.when_full") && message.contains("drop_oldest"),
        "{message}"
    );
}

#[test]
fn dangling_inputs_and_unknown_types_are_errors_with_hints() {
    let message = errors(&GOOD.replace("inputs = [\"api\"]", "inputs = [\"apii\"]"));
    assert!(
        message.contains("sinks.upstream.inputs.0: input \"apii\" does not name a source"),
        "{message}"
    );
    assert!(message.contains("did you mean \"api\"?"), "{message}");
    assert!(
        message.contains("sources.api: no sink lists this source"),
        "{message}"
    );
    let message = errors(&GOOD.replace("type = \"http_forward\"", "type = \"http_forwarder\""));
    assert!(
        message.contains("sinks.upstream.type: unknown type \"http_forwarder\"")
            && message.contains("did you mean \"http_forward\"?"),
        "{message}"
    );
}

#[test]
fn every_error_in_a_file_is_reported_at_once() {
    let text = GOOD
        .replace("max_body_bytes = \"64KiB\"", "max_body_bytes = \"lots\"")
        .replace(
            "url = \"http://127.0.0.1:5000\"",
            "url = \"localhost:5000\"",
        );
    let message = errors(&text);
    assert!(message.contains("sources.api.max_body_bytes"), "{message}");
    assert!(
        message.contains("sinks.upstream.url: expected an http(s) URL"),
        "{message}"
    );
}

#[test]
fn a_syntax_error_names_the_line() {
    let message = errors("[sources.api\ntype = \"http\"\n");
    assert!(message.starts_with("sluice.toml:1:"), "{message}");
}

#[test]
fn environment_overrides_replace_values_and_say_where_they_came_from() {
    let config = parse_with(
        GOOD,
        &[
            ("SLUICE_SINKS__UPSTREAM__URL", "http://10.1.2.3:9000"),
            ("SLUICE_SINKS__UPSTREAM__CONCURRENCY", "8"),
        ],
    )
    .expect("valid");
    let SinkSettings::HttpForward(forward) = &config.sinks[0].settings else {
        panic!("kind")
    };
    assert_eq!(forward.url, "http://10.1.2.3:9000");
    assert_eq!(config.sinks[0].delivery.concurrency, 8);

    let Err(bad) = parse_with(GOOD, &[("SLUICE_SINKS__UPSTREAM__URL", "nope")]) else {
        panic!("expected an error")
    };
    let message = bad.to_string();
    assert!(
        message.contains("sinks.upstream.url") && message.contains("SLUICE_SINKS__UPSTREAM__URL"),
        "{message}"
    );
}

#[test]
fn variables_are_interpolated_and_a_missing_one_is_an_error() {
    let text = GOOD.replace(
        "url = \"http://127.0.0.1:5000\"",
        "url = \"http://${UP_HOST}:${UP_PORT:-5000}/x\"",
    );
    let config = parse_with(&text, &[("UP_HOST", "example.internal")]).expect("valid");
    let SinkSettings::HttpForward(forward) = &config.sinks[0].settings else {
        panic!("kind")
    };
    assert_eq!(forward.url, "http://example.internal:5000/x");
    let Err(missing) = parse_with(&text, &[]) else {
        panic!("expected an error")
    };
    let message = missing.to_string();
    assert!(
        message.contains(
            "sluice.toml:15: sinks.upstream.url: the environment variable UP_HOST is not set"
        ),
        "{message}"
    );
}

#[test]
fn two_sources_on_one_address_are_an_error() {
    let text = GOOD
        .replace(
            "[sinks.upstream]",
            "[sources.api2]\ntype = \"http\"\nlisten = \"127.0.0.1:8080\"\n\n[sinks.upstream]",
        )
        .replace("inputs = [\"api\"]", "inputs = [\"api\", \"api2\"]");
    let message = errors(&text);
    assert!(
        message.contains(
            "sources.api2.listen: 127.0.0.1:8080 is already the address of sources.api.listen"
        ),
        "{message}"
    );
}

#[test]
fn the_validate_command_prints_errors_and_fails_and_accepts_the_examples() {
    let dir = tempfile::tempdir().expect("temp dir");
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, GOOD.replace("inputs", "inptus")).expect("write");
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["validate", "-c"])
        .arg(&bad)
        .output()
        .expect("run sluice");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml:14: sinks.upstream.inptus: unknown key `inptus`")
            && stderr.contains("did you mean `inputs`?"),
        "{stderr}"
    );

    for example in
        std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/examples")).expect("examples")
    {
        let path = example.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
                .args(["validate", "-c"])
                .arg(&path)
                .output()
                .expect("run sluice");
            assert!(
                output.status.success(),
                "{}: {}",
                path.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

#[test]
fn version_and_help_work() {
    let version = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--version")
        .output()
        .expect("run sluice");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("sluice "));
    let help = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("--help")
        .output()
        .expect("run sluice");
    let text = String::from_utf8_lossy(&help.stdout);
    assert!(text.contains("run") && text.contains("validate"), "{text}");
}
