//! The desired-state files and the pattern catalog as the controller takes
//! them in: a file's documents become declarations of its source (all or
//! nothing), a reloaded catalog replaces the old one.
//!
//! It touches no file itself: watchers hand it what they read (the
//! patterns watcher a whole catalog, loaded on its own thread).

use super::*;
use crate::events::Reason;

impl<R: Runtime> Controller<R> {
    pub(super) fn file_event(&mut self, ev: FileEvent) {
        match ev {
            FileEvent::Changed { name, result } => {
                // Errors name the file as users know it: desired/<name>.
                let result = result.map_err(|mut e| {
                    e.file = Source::File(name.clone()).to_string();
                    e
                });
                self.files.insert(name.clone(), result);
                self.apply_file(&name);
            }
            FileEvent::Synced => self.synced = true,
            FileEvent::Removed { name } => {
                self.files.remove(&name);
                self.file_errors.remove(&name);
                let source = Source::File(name);
                // Withdrawing everything cannot conflict.
                let touched = self
                    .desired
                    .replace_source(&source, &[])
                    .unwrap_or_default();
                tracing::info!(
                    "{source} removed: {} instances no longer declared by it",
                    touched.len()
                );
                for id in touched {
                    self.declaration_event(&id, &source.to_string());
                    self.touch(&id);
                }
                self.sources_dirty = true;
            }
        }
    }

    /// Makes the desired set hold what file `name` declares now, or, when
    /// its content is refused, keeps what it declared before.
    pub(super) fn apply_file(&mut self, name: &str) {
        let source = Source::File(name.to_string());
        let shown = source.to_string();
        let outcome = match self.files.get(name) {
            Some(Ok(docs)) => self.specs_of(&shown, docs),
            Some(Err(e)) => Err(e.clone()),
            None => return,
        }
        .and_then(|(specs, lines)| {
            self.desired
                .replace_source(&source, &specs)
                .map_err(|(i, conflict)| YamlError {
                    file: shown.clone(),
                    line: lines.get(i).copied(),
                    message: conflict.to_string(),
                })
        });
        self.sources_dirty = true;
        match outcome {
            Ok(touched) => {
                let was_refused = self.file_errors.remove(name).is_some();
                if was_refused || !touched.is_empty() {
                    tracing::info!(
                        "{shown}: applied, {} instances declared",
                        self.desired.declared_by(&source).len()
                    );
                }
                if was_refused {
                    let msg = format!("{shown} is accepted again");
                    self.emit_general(Reason::SourceValid, "", &shown, msg);
                }
                for id in touched {
                    self.declaration_event(&id, &shown);
                    self.reopen_circuit(&id);
                    self.touch(&id);
                }
            }
            Err(e) => {
                if self.file_errors.get(name) != Some(&e) {
                    let msg = if self.desired.count_declared_by(&source) > 0 {
                        format!("{e} (the file's last good content stays in force)")
                    } else {
                        format!("{e} (nothing of it is in force)")
                    };
                    tracing::error!("{msg}");
                    self.emit_general(Reason::SourceInvalid, "", &shown, msg);
                }
                self.file_errors.insert(name.to_string(), e);
            }
        }
    }

    /// Turns a file's documents into specs, checking them against the
    /// catalog; also returns each spec's line.
    pub(super) fn specs_of(
        &self,
        display: &str,
        docs: &[DesiredDoc],
    ) -> Result<(Vec<InstanceSpec>, Vec<u64>), YamlError> {
        let at = |line: u64, message: String| YamlError {
            file: display.to_string(),
            line: Some(line),
            message,
        };
        let mut specs = Vec::with_capacity(docs.len());
        let mut lines = Vec::with_capacity(docs.len());
        let mut seen: HashMap<String, u64> = HashMap::new();
        for doc in docs {
            let pattern = self.catalog.get(&doc.pattern).ok_or_else(|| {
                at(
                    doc.line,
                    format!(
                        "unknown pattern {:?} ({})",
                        doc.pattern,
                        self.known_patterns()
                    ),
                )
            })?;
            let key = doc
                .key(pattern.isolation)
                .map_err(|e| at(doc.line, e.to_string()))?;
            let spec = InstanceSpec::new(key, doc.config.clone(), doc.grace_period)
                .map_err(|e| at(doc.line, e.to_string()))?;
            pattern
                .check_config(&spec.config)
                .map_err(|e| at(doc.line, e.to_string()))?;
            let id = spec.key.process_id();
            if let Some(first) = seen.insert(id.clone(), doc.line) {
                return Err(at(
                    doc.line,
                    format!("{id} is declared twice in this file (first at line {first})"),
                ));
            }
            specs.push(spec);
            lines.push(doc.line);
        }
        Ok((specs, lines))
    }

    /// The patterns a launch may name, for "not found" errors; where none
    /// is known, where they were looked for.
    pub(super) fn known_patterns(&self) -> String {
        let names: Vec<&str> = self.catalog.iter().map(|p| p.name.as_str()).collect();
        if names.is_empty() {
            format!(
                "no pattern is known: {} has no valid pattern directory",
                self.cfg.patterns_dir.display()
            )
        } else {
            format!("known: {}", names.join(", "))
        }
    }

    /// A circuit-broken instance whose declaration changed starts again.
    pub(super) fn reopen_circuit(&mut self, id: &str) {
        if self.desired.get(id).is_some()
            && let Some(o) = self.observed.get_mut(id)
            && transitions::close_circuit(o)
        {
            tracing::info!("{id}: declaration changed, circuit closed");
            let msg = "its declaration changed: the circuit is closed and it starts again";
            self.emit(id, Reason::CircuitClosed, msg);
        }
    }

    /// Records that `source` declared `id`, changed its declaration, or no
    /// longer declares it.
    fn declaration_event(&mut self, id: &str, source: &str) {
        match self.desired.get(id) {
            Some(d) => {
                let msg = format!("declared by {}", d.sources_text());
                self.emit_by(id, Reason::Declared, msg, source.to_string());
            }
            None => {
                let msg = format!("{source} no longer declares it");
                self.emit_by(id, Reason::Undeclared, msg, source.to_string());
            }
        }
    }

    pub(super) fn reload_catalog(&mut self, reloaded: Reloaded) {
        let Reloaded {
            catalog: next,
            errors,
        } = reloaded;
        for p in next.iter() {
            let rolling = self.cfg.plan.rolling_restart;
            match self.catalog.get(&p.name) {
                None => {
                    let msg = format!(
                        "Discovered pattern: {} (version: {}, isolation: {})",
                        p.name, p.version, p.isolation
                    );
                    tracing::info!("{msg}");
                    self.emit_general(Reason::PatternAdded, &p.name, "", msg);
                }
                Some(old) if **old != **p => {
                    let msg = format!(
                        "pattern {} changed (version: {}): its instances restart{}",
                        p.name,
                        p.version,
                        if rolling { " one at a time" } else { "" }
                    );
                    tracing::info!("{msg}");
                    self.emit_general(Reason::PatternChanged, &p.name, "", msg);
                }
                Some(_) => {}
            }
        }
        let mut removed = Vec::new();
        for old in self.catalog.iter() {
            if next.get(&old.name).is_none() {
                let running = self
                    .observed
                    .values()
                    .filter(|o| o.spec.key.pattern == old.name)
                    .count();
                let msg = format!(
                    "pattern {} removed: its {running} instances keep running; new launches get NOT_FOUND",
                    old.name
                );
                tracing::warn!("{msg}");
                removed.push((old.name.clone(), msg));
            }
        }
        for (name, msg) in removed {
            self.emit_general(Reason::PatternRemoved, &name, "", msg);
        }
        let errors: Vec<String> = errors.iter().map(ToString::to_string).collect();
        for e in &errors {
            if !self.catalog_errors.contains(e) {
                tracing::error!("{e}");
                self.emit_general(Reason::SourceInvalid, "", "", e.clone());
            }
        }
        self.catalog_errors = errors;
        self.catalog = next;
        // A file may name a pattern that just appeared, or rely on a
        // manifest's isolation level that just changed.
        let names: Vec<String> = self.files.keys().cloned().collect();
        for name in names {
            self.apply_file(&name);
        }
        self.sources_dirty = true;
    }
}
