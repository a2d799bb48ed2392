//! `patterns/<dir>/manifest.yaml`: the manifest parser, and what a loaded
//! manifest is used for without touching the system: launches of it under
//! every isolation level, its `config_keys`, the environment and limits
//! its processes get.

#![no_main]

use std::collections::BTreeMap;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use prism_launcher::runtime::spawn::check_run_as;
use prism_launcher::sources::Catalog;
use prism_launcher::spec::manifest::parse_manifest;
use prism_launcher::spec::{InstanceKey, InstanceSpec, is_valid_pattern_name};

#[path = "common.rs"]
mod common;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let dir = Path::new("/srv/patterns/fuzz");
    let pattern = match parse_manifest(text, "patterns/fuzz/manifest.yaml", dir) {
        Ok(p) => p,
        Err(e) => {
            // Errors are shown to users (log, ListSources).
            let _ = e.to_string();
            return;
        }
    };
    assert!(is_valid_pattern_name(&pattern.name), "{:?}", pattern.name);
    assert!(pattern.executable.starts_with(dir) || pattern.executable.is_absolute());
    let _ = (
        pattern.isolation.to_string(),
        pattern.isolation.distribution_key(),
    );
    let _ = check_run_as(&pattern).map_err(|e| e.to_string());

    let configs = [
        BTreeMap::new(),
        BTreeMap::from([("LOG_LEVEL".to_string(), "debug".to_string())]),
        BTreeMap::from([("OTHER".to_string(), "x".to_string())]),
    ];
    for level in common::LEVELS {
        // Whatever name a manifest may have, each level can launch it.
        let key = InstanceKey::new(&pattern.name, level, "tenant-a", "user-1")
            .expect("a valid manifest's name makes a valid key");
        for config in &configs {
            let spec =
                InstanceSpec::new(key.clone(), config.clone(), None).expect("the config is valid");
            match pattern.check_config(&spec.config) {
                Ok(()) => common::start_environment(&spec, &pattern),
                Err(e) => {
                    let _ = e.to_string();
                }
            }
        }
    }

    // The catalog keeps it under its name; a reload compares it.
    let catalog = Catalog::from_patterns([pattern.clone()]);
    let kept = catalog.get(&pattern.name).expect("the catalog has it");
    assert_eq!(**kept, pattern);
});
