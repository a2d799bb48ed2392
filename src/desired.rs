//! The desired set: every instance that some source (the API, a file in
//! `desired/`) declares, with who declares it.
//!
//! Pure data and rules; persistence of API declarations is in
//! [`crate::sources::api_store`].

use std::collections::BTreeMap;
use std::fmt;

use crate::spec::InstanceSpec;

/// Who declares an instance.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A gRPC LaunchPattern call.
    Api,
    /// A desired-state file, by its name inside `desired/`.
    File(String),
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Source::Api => f.write_str("api"),
            Source::File(name) => write!(f, "desired/{name}"),
        }
    }
}

/// A declaration refused because another source declares the same
/// process_id differently.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{process_id} is already declared by {existing} with a different config")]
pub struct Conflict {
    /// The contested instance.
    pub process_id: String,
    /// The source whose declaration stands.
    pub existing: Source,
}

/// What a declaration changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Declared {
    /// The instance was not desired before.
    New,
    /// The same declaration again.
    Unchanged,
    /// The source changed its own declaration (config or grace period).
    Updated,
}

/// One desired instance: the declarations of every source that wants it.
#[derive(Debug, Clone, PartialEq)]
pub struct DesiredInstance {
    by_source: BySource,
}

/// The declarations of one instance, in source order. Almost always one
/// or two: a sorted vector, where a map's first node would hold room for
/// eleven specs (1.4 kB an instance).
#[derive(Debug, Clone, Default, PartialEq)]
struct BySource(Vec<(Source, InstanceSpec)>);

impl BySource {
    fn one(source: Source, spec: InstanceSpec) -> Self {
        BySource(vec![(source, spec)])
    }

    fn find(&self, s: &Source) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.cmp(s))
    }

    fn get(&self, s: &Source) -> Option<&InstanceSpec> {
        self.find(s).ok().map(|i| &self.0[i].1)
    }

    fn contains_key(&self, s: &Source) -> bool {
        self.find(s).is_ok()
    }

    fn insert(&mut self, source: Source, spec: InstanceSpec) {
        match self.find(&source) {
            Ok(i) => self.0[i].1 = spec,
            Err(i) => {
                // Room for one more, not the four a growing vector takes.
                self.0.reserve_exact(1);
                self.0.insert(i, (source, spec));
            }
        }
    }

    fn remove(&mut self, s: &Source) -> Option<InstanceSpec> {
        self.find(s).ok().map(|i| self.0.remove(i).1)
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    fn iter(&self) -> impl Iterator<Item = (&Source, &InstanceSpec)> {
        self.0.iter().map(|(s, spec)| (s, spec))
    }

    fn keys(&self) -> impl Iterator<Item = &Source> {
        self.0.iter().map(|(s, _)| s)
    }

    fn values(&self) -> impl Iterator<Item = &InstanceSpec> {
        self.0.iter().map(|(_, spec)| spec)
    }
}

impl DesiredInstance {
    /// The spec to run. All declarations agree on the config; the grace
    /// period is the API's when it has one, else the first file's.
    pub fn spec(&self) -> &InstanceSpec {
        // Non-empty by construction: an instance with no source is removed.
        self.by_source
            .values()
            .next()
            .expect("a desired instance has at least one source")
    }

    /// The sources declaring it, in order (`api` first).
    pub fn sources(&self) -> impl Iterator<Item = &Source> {
        self.by_source.keys()
    }

    /// True when this source declares it.
    pub fn declared_by(&self, s: &Source) -> bool {
        self.by_source.contains_key(s)
    }

    /// The spec one source declares.
    pub fn spec_of(&self, s: &Source) -> Option<&InstanceSpec> {
        self.by_source.get(s)
    }

    /// The sources as text, for status output (`api, desired/a.yaml`).
    pub fn sources_text(&self) -> String {
        let v: Vec<String> = self.sources().map(ToString::to_string).collect();
        v.join(", ")
    }
}

/// Every desired instance by process_id.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DesiredSet {
    instances: BTreeMap<String, DesiredInstance>,
}

impl DesiredSet {
    /// Adds or updates `source`'s declaration of `spec`. Refused when
    /// another source declares the same process_id with another config, or
    /// when the API re-declares an instance with another config (the API
    /// must terminate it first: a launch never silently changes a running
    /// tenant).
    pub fn declare(&mut self, source: Source, spec: InstanceSpec) -> Result<Declared, Conflict> {
        let id = spec.key.process_id();
        let Some(inst) = self.instances.get_mut(&id) else {
            let by_source = BySource::one(source, spec);
            self.instances.insert(id, DesiredInstance { by_source });
            return Ok(Declared::New);
        };
        for (s, existing) in inst.by_source.iter() {
            let other_source = *s != source;
            if !existing.agrees_with(&spec) && (other_source || source == Source::Api) {
                return Err(Conflict {
                    process_id: id,
                    existing: s.clone(),
                });
            }
        }
        // An equal re-declaration keeps the stored spec: a process started
        // from it shares its config, which keeps the planner's comparison a
        // pointer check.
        match inst.by_source.get(&source) {
            Some(old) if *old == spec => Ok(Declared::Unchanged),
            Some(_) => {
                inst.by_source.insert(source, spec);
                Ok(Declared::Updated)
            }
            None => {
                inst.by_source.insert(source, spec);
                Ok(Declared::Unchanged)
            }
        }
    }

    /// Removes `source`'s declaration; returns whether it had one.
    pub fn withdraw(&mut self, source: &Source, process_id: &str) -> bool {
        let Some(inst) = self.instances.get_mut(process_id) else {
            return false;
        };
        let had = inst.by_source.remove(source).is_some();
        if inst.by_source.is_empty() {
            self.instances.remove(process_id);
        }
        had
    }

    /// The instance with this process_id.
    pub fn get(&self, process_id: &str) -> Option<&DesiredInstance> {
        self.instances.get(process_id)
    }

    /// All instances in process_id order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &DesiredInstance)> {
        self.instances.iter()
    }

    /// Number of desired instances.
    pub fn len(&self) -> usize {
        self.instances.len()
    }

    /// True when nothing is desired.
    pub fn is_empty(&self) -> bool {
        self.instances.is_empty()
    }

    /// Replaces everything `source` declares with `specs`, all or nothing:
    /// when one of them conflicts with another source's declaration, nothing
    /// changes and the index of the first conflicting spec is returned.
    /// Returns the process_ids whose declaration by `source` was added,
    /// changed or removed.
    pub fn replace_source(
        &mut self,
        source: &Source,
        specs: &[InstanceSpec],
    ) -> Result<Vec<String>, (usize, Conflict)> {
        for (i, spec) in specs.iter().enumerate() {
            let id = spec.key.process_id();
            if let Some(inst) = self.instances.get(&id) {
                for (s, existing) in inst.by_source.iter() {
                    if s != source && !existing.agrees_with(spec) {
                        return Err((
                            i,
                            Conflict {
                                process_id: id,
                                existing: s.clone(),
                            },
                        ));
                    }
                }
            }
        }
        let mut touched = Vec::new();
        let keep: std::collections::BTreeSet<String> =
            specs.iter().map(|s| s.key.process_id()).collect();
        let old: Vec<String> = self
            .instances
            .iter()
            .filter(|(id, i)| i.by_source.contains_key(source) && !keep.contains(*id))
            .map(|(id, _)| id.clone())
            .collect();
        for id in old {
            self.withdraw(source, &id);
            touched.push(id);
        }
        for spec in specs {
            let id = spec.key.process_id();
            let inst = self
                .instances
                .entry(id.clone())
                .or_insert_with(|| DesiredInstance {
                    by_source: BySource::default(),
                });
            // Kept when equal (see `declare`).
            if inst.by_source.get(source) != Some(spec) {
                inst.by_source.insert(source.clone(), spec.clone());
                touched.push(id);
            }
        }
        Ok(touched)
    }

    /// How many instances `source` declares.
    pub fn count_declared_by(&self, source: &Source) -> usize {
        self.instances
            .values()
            .filter(|i| i.by_source.contains_key(source))
            .count()
    }

    /// The specs declared by `source`.
    pub fn declared_by(&self, source: &Source) -> Vec<InstanceSpec> {
        self.instances
            .values()
            .filter_map(|i| i.by_source.get(source).cloned())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::spec::{InstanceKey, Isolation};

    fn spec(ns: &str, level: &str) -> InstanceSpec {
        let key = InstanceKey::new("p", Isolation::Namespace, ns, "").unwrap();
        let mut config = BTreeMap::new();
        config.insert("LEVEL".to_string(), level.to_string());
        InstanceSpec::new(key, config, None).unwrap()
    }

    #[test]
    fn declaring_twice_is_idempotent() {
        let mut d = DesiredSet::default();
        assert_eq!(d.declare(Source::Api, spec("a", "x")), Ok(Declared::New));
        assert_eq!(
            d.declare(Source::Api, spec("a", "x")),
            Ok(Declared::Unchanged)
        );
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn an_equal_redeclaration_keeps_the_stored_config() {
        let mut d = DesiredSet::default();
        let file = Source::File("f.yaml".into());
        d.declare(Source::Api, spec("a", "x")).unwrap();
        d.replace_source(&file, &[spec("b", "x")]).unwrap();
        let api = d.get("ns:a:p").unwrap().spec().config.clone();
        let from_file = d.get("ns:b:p").unwrap().spec().config.clone();
        d.declare(Source::Api, spec("a", "x")).unwrap();
        assert_eq!(d.replace_source(&file, &[spec("b", "x")]), Ok(vec![]));
        assert!(Arc::ptr_eq(&api, &d.get("ns:a:p").unwrap().spec().config));
        assert!(Arc::ptr_eq(
            &from_file,
            &d.get("ns:b:p").unwrap().spec().config
        ));
        d.declare(Source::Api, spec("a", "y")).unwrap_err();
        d.replace_source(&file, &[spec("b", "y")]).unwrap();
        assert_eq!(d.get("ns:b:p").unwrap().spec().config["LEVEL"], "y");
    }

    #[test]
    fn a_different_config_from_another_source_is_a_conflict() {
        let mut d = DesiredSet::default();
        d.declare(Source::File("f.yaml".into()), spec("a", "x"))
            .unwrap();
        let e = d.declare(Source::Api, spec("a", "y")).unwrap_err();
        assert_eq!(e.existing, Source::File("f.yaml".into()));
        assert_eq!(
            d.declare(Source::Api, spec("a", "x")),
            Ok(Declared::Unchanged)
        );
        assert_eq!(
            d.get("ns:a:p").unwrap().sources_text(),
            "api, desired/f.yaml"
        );
    }

    #[test]
    fn the_api_cannot_change_its_own_config_but_a_file_can() {
        let mut d = DesiredSet::default();
        d.declare(Source::Api, spec("a", "x")).unwrap();
        assert!(d.declare(Source::Api, spec("a", "y")).is_err());
        let f = Source::File("f.yaml".into());
        d.declare(f.clone(), spec("b", "x")).unwrap();
        assert_eq!(d.declare(f, spec("b", "y")), Ok(Declared::Updated));
    }

    #[test]
    fn replacing_a_files_declarations_is_all_or_nothing() {
        let mut d = DesiredSet::default();
        let f = Source::File("f.yaml".into());
        d.replace_source(&f, &[spec("a", "x"), spec("b", "x")])
            .unwrap();
        d.declare(Source::Api, spec("c", "x")).unwrap();
        // c conflicts with the API: nothing changes.
        let (i, e) = d
            .replace_source(&f, &[spec("a", "y"), spec("c", "y")])
            .unwrap_err();
        assert_eq!(i, 1);
        assert_eq!(e.existing, Source::Api);
        assert_eq!(d.get("ns:a:p").unwrap().spec().config["LEVEL"], "x");
        // a changes, b goes, c joins the API's declaration.
        let mut touched = d
            .replace_source(&f, &[spec("a", "y"), spec("c", "x")])
            .unwrap();
        touched.sort();
        assert_eq!(touched, vec!["ns:a:p", "ns:b:p", "ns:c:p"]);
        assert!(d.get("ns:b:p").is_none());
        assert_eq!(
            d.get("ns:c:p").unwrap().sources_text(),
            "api, desired/f.yaml"
        );
        assert_eq!(d.replace_source(&f, &[]).unwrap().len(), 2);
        assert_eq!(d.len(), 1);
    }

    #[test]
    fn an_instance_stays_desired_while_one_source_declares_it() {
        let mut d = DesiredSet::default();
        let f = Source::File("f.yaml".into());
        d.declare(Source::Api, spec("a", "x")).unwrap();
        d.declare(f.clone(), spec("a", "x")).unwrap();
        assert!(d.withdraw(&Source::Api, "ns:a:p"));
        assert!(d.get("ns:a:p").is_some());
        assert!(d.withdraw(&f, "ns:a:p"));
        assert!(d.get("ns:a:p").is_none());
        assert!(!d.withdraw(&f, "ns:a:p"));
    }
}
