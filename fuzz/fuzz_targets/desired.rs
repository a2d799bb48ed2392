//! `desired/*.yaml`: the desired-file parser, then each document as the
//! controller takes it in (`controller::files`, `specs_of`): its key under
//! the manifest's level, its spec, the pattern's `config_keys`, one
//! declaration per process_id, and the file's declarations replacing what
//! it declared before.

#![no_main]

use std::collections::HashMap;

use libfuzzer_sys::fuzz_target;
use prism_launcher::desired::{DesiredSet, Source};
use prism_launcher::sources::desired_dir::parse::{is_candidate, parse_desired};
use prism_launcher::spec::InstanceSpec;

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    assert!(is_candidate("fuzz.yaml"));
    let docs = match parse_desired(text, "desired/fuzz.yaml") {
        Ok(docs) => docs,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let catalog = common::catalog();
    let mut specs = Vec::new();
    let mut seen: HashMap<String, u64> = HashMap::new();
    for doc in &docs {
        assert!(doc.line >= 1, "{doc:?}");
        for level in common::LEVELS {
            let Ok(key) = doc.key(level) else {
                // The parser checks an explicit level's names already.
                assert!(doc.isolation.is_none(), "{doc:?}");
                continue;
            };
            // The parser checked the config: a spec can always be made.
            let spec = InstanceSpec::new(key, doc.config.clone(), doc.grace_period)
                .expect("a parsed document's config is valid");
            let _ = spec.key.process_id();
        }
        // As the controller does, with the catalog's manifest.
        let Some(pattern) = catalog.get(&doc.pattern) else {
            continue;
        };
        let Ok(key) = doc.key(pattern.isolation) else {
            continue;
        };
        let spec = InstanceSpec::new(key, doc.config.clone(), doc.grace_period)
            .expect("a parsed document's config is valid");
        if pattern.check_config(&spec.config).is_err() {
            continue;
        }
        common::start_environment(&spec, pattern);
        if seen.insert(spec.key.process_id(), doc.line).is_none() {
            specs.push(spec);
        }
    }
    // The file's declarations, then the same again, then an API launch of
    // the first with another config, then the file emptied.
    let file = Source::File("fuzz.yaml".into());
    let mut set = DesiredSet::default();
    let touched = set
        .replace_source(&file, &specs)
        .expect("one source never conflicts");
    assert_eq!(touched.len(), specs.len());
    assert_eq!(set.count_declared_by(&file), specs.len());
    assert!(
        set.replace_source(&file, &specs)
            .expect("the same again")
            .is_empty()
    );
    if let Some(first) = specs.first() {
        let mut config = (*first.config).clone();
        config.insert("FUZZ_OTHER".into(), "1".into());
        let other = InstanceSpec::new(first.key.clone(), config, None);
        if let Ok(other) = other {
            let _ = set.declare(Source::Api, other).map_err(|e| e.to_string());
        }
    }
    let _ = set.replace_source(&file, &[]);
});
