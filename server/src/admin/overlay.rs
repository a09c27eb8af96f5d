//! The admin overlay of SPEC §10: run-time changes kept on top of the config file, so a reload never undoes what an operator did.
//!
//! The effective config is the file's with the overlay applied:
//! - **added** providers (admin `POST`) are appended after the file's;
//! - **overrides** (admin `PUT` of a file-defined provider) replace the
//!   file's entry; **tombstones** (admin `DELETE` of a file-defined
//!   provider) hide it;
//! - **route overrides** (admin `PUT`/`DELETE /admin/routes/{model}`)
//!   replace or hide the file's route for that model.
//!
//! Each override and tombstone remembers the file entry it was made on
//! (its *base*: the file's entry at the latest admin change). On reload
//! ([`Overlay::rebase`]):
//! - a file that newly defines an id an admin `POST` created is a
//!   conflict: the reload fails, unless forced (`?override=true`), when
//!   the file's entry wins and the admin-added one is dropped;
//! - a file entry that differs from the base of an override or tombstone
//!   is a warning, at every reload until resolved, and the admin change
//!   keeps winning; forced, the file wins and the override or tombstone
//!   is dropped; making the admin change again accepts the file's entry
//!   as the new base;
//! - a tombstone whose file entry is gone is dropped (the file agrees); an
//!   override whose file entry is gone keeps serving the admin's version.
//!
//! The overlay lives in memory: a restart starts from the file alone
//! (sharing it through Redis is SPEC §15, a later issue).

use std::collections::BTreeMap;

use serde::Serialize;
use switchyard_core::{ProviderConfig, RouteConfig};

use crate::config::Config;

/// Where a provider of the effective config comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Origin {
    /// The config file, unchanged.
    File,
    /// Added through the admin API.
    Admin,
    /// Defined by the file, replaced through the admin API.
    Override,
}

/// An admin change to something the file defines (or defined).
#[derive(Clone, Debug, PartialEq)]
struct Pinned<T> {
    /// The admin's value; `None` hides the file's (a tombstone).
    value: Option<T>,
    /// The file's entry when the change was made (`None`: the file had none).
    base: Option<T>,
}

/// A reload refused because the file now defines ids an admin `POST` created.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    /// `(path in the file, id)` of each clash.
    pub clashes: Vec<(String, String)>,
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let list: Vec<String> = self
            .clashes
            .iter()
            .map(|(path, id)| {
                format!(
                    "{path}: the file now defines '{id}', which was added through the admin API"
                )
            })
            .collect();
        write!(
            f,
            "{}; the admin-added provider keeps serving (POST /admin/reload?override=true lets the file win)",
            list.join("; ")
        )
    }
}

/// Admin changes kept on top of the file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overlay {
    added: Vec<ProviderConfig>,
    providers: BTreeMap<String, Pinned<ProviderConfig>>,
    routes: BTreeMap<String, Pinned<RouteConfig>>,
}

/// A summary of the overlay, for `GET /admin/overlay`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct OverlaySummary {
    /// Providers added through the admin API.
    pub added: Vec<String>,
    /// File-defined providers replaced through the admin API.
    pub overrides: Vec<String>,
    /// File-defined providers removed through the admin API.
    pub tombstones: Vec<String>,
    /// Models whose route was replaced through the admin API.
    pub route_overrides: Vec<String>,
    /// Models whose file route was removed through the admin API.
    pub route_tombstones: Vec<String>,
}

fn file_provider<'a>(file: &'a Config, id: &str) -> Option<&'a ProviderConfig> {
    file.providers.iter().find(|p| p.id == id)
}

impl Overlay {
    /// Whether the overlay holds nothing.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.providers.is_empty() && self.routes.is_empty()
    }

    /// The effective providers and routes: `file` with the overlay applied.
    pub fn apply(&self, file: &Config) -> (Vec<ProviderConfig>, BTreeMap<String, RouteConfig>) {
        let mut providers = Vec::with_capacity(file.providers.len() + self.added.len());
        for provider in &file.providers {
            match self.providers.get(&provider.id) {
                Some(pinned) => providers.extend(pinned.value.iter().cloned()),
                None => providers.push(provider.clone()),
            }
        }
        for (id, pinned) in &self.providers {
            if file_provider(file, id).is_none() {
                providers.extend(pinned.value.iter().cloned());
            }
        }
        providers.extend(self.added.iter().cloned());
        let mut routes = file.routes.clone();
        for (model, pinned) in &self.routes {
            match &pinned.value {
                Some(route) => routes.insert(model.clone(), route.clone()),
                None => routes.remove(model),
            };
        }
        (providers, routes)
    }

    /// Where provider `id` of the effective config comes from.
    pub fn origin(&self, id: &str) -> Origin {
        if self.added.iter().any(|p| p.id == id) {
            Origin::Admin
        } else if self.providers.contains_key(id) {
            Origin::Override
        } else {
            Origin::File
        }
    }

    /// What the overlay holds.
    pub fn summary(&self) -> OverlaySummary {
        let mut summary = OverlaySummary {
            added: self.added.iter().map(|p| p.id.clone()).collect(),
            ..OverlaySummary::default()
        };
        for (id, pinned) in &self.providers {
            match pinned.value {
                Some(_) => summary.overrides.push(id.clone()),
                None => summary.tombstones.push(id.clone()),
            }
        }
        for (model, pinned) in &self.routes {
            match pinned.value {
                Some(_) => summary.route_overrides.push(model.clone()),
                None => summary.route_tombstones.push(model.clone()),
            }
        }
        summary
    }

    /// Records an admin `POST` of `config` (whose id the effective config lacks).
    pub fn add(&mut self, file: &Config, config: ProviderConfig) {
        if self.providers.contains_key(&config.id) || file_provider(file, &config.id).is_some() {
            // The file defines it (tombstoned): bringing it back is an override.
            self.set_provider(file, config.id.clone(), Some(config));
        } else {
            self.added.push(config);
        }
    }

    /// Records an admin `PUT` of `config` (whose id the effective config has).
    pub fn replace(&mut self, file: &Config, config: ProviderConfig) {
        if let Some(slot) = self.added.iter_mut().find(|p| p.id == config.id) {
            *slot = config;
        } else {
            self.set_provider(file, config.id.clone(), Some(config));
        }
    }

    /// Records an admin `DELETE` of provider `id`.
    pub fn remove(&mut self, file: &Config, id: &str) {
        if let Some(at) = self.added.iter().position(|p| p.id == id) {
            self.added.remove(at);
        } else {
            self.set_provider(file, id.to_owned(), None);
        }
    }

    fn set_provider(&mut self, file: &Config, id: String, value: Option<ProviderConfig>) {
        let base = file_provider(file, &id).cloned();
        if value == base {
            // Back to what the file says: no overlay entry needed.
            self.providers.remove(&id);
        } else {
            self.providers.insert(id, Pinned { value, base });
        }
    }

    /// Records an admin `PUT` (`Some`) or `DELETE` (`None`) of the route of `model`.
    pub fn set_route(&mut self, file: &Config, model: &str, route: Option<RouteConfig>) {
        let base = file.routes.get(model).cloned();
        if route == base {
            self.routes.remove(model);
        } else {
            self.routes
                .insert(model.to_owned(), Pinned { value: route, base });
        }
    }

    /// The overlay carried onto a newly loaded `file`, with the warnings
    /// to report; `force` (`?override=true`) lets the file win.
    pub fn rebase(&self, file: &Config, force: bool) -> Result<(Self, Vec<String>), Conflict> {
        let mut next = self.clone();
        let mut warnings = Vec::new();
        let clashes: Vec<(String, String)> = file
            .providers
            .iter()
            .enumerate()
            .filter(|(_, p)| self.added.iter().any(|a| a.id == p.id))
            .map(|(i, p)| (format!("providers[{i}].id"), p.id.clone()))
            .collect();
        if !clashes.is_empty() {
            if !force {
                return Err(Conflict { clashes });
            }
            for (path, id) in clashes {
                next.added.retain(|p| p.id != id);
                warnings.push(format!(
                    "{path}: the file's '{id}' replaces the provider added through the admin API (override=true)"
                ));
            }
        }
        for (id, pinned) in &self.providers {
            let now = file_provider(file, id).cloned();
            if now == pinned.base {
                continue;
            }
            let what = if pinned.value.is_some() {
                "override"
            } else {
                "deletion"
            };
            if force || (pinned.value.is_none() && now.is_none()) {
                next.providers.remove(id);
                if force {
                    warnings.push(format!(
                        "provider '{id}': the file changed under an admin {what}; the file wins (override=true)"
                    ));
                }
                continue;
            }
            warnings.push(match &now {
                Some(_) => format!(
                    "provider '{id}': the file's entry changed under an admin {what}; the admin {what} stays in force (POST /admin/reload?override=true lets the file win)"
                ),
                None => format!(
                    "provider '{id}': the file no longer defines it; the admin override keeps serving (DELETE it, or reload with override=true, to drop it)"
                ),
            });
        }
        for (model, pinned) in &self.routes {
            let now = file.routes.get(model).cloned();
            if now == pinned.base {
                continue;
            }
            if force || (pinned.value.is_none() && now.is_none()) {
                next.routes.remove(model);
                if force {
                    warnings.push(format!(
                        "route '{model}': the file changed under an admin change; the file wins (override=true)"
                    ));
                }
                continue;
            }
            warnings.push(format!(
                "route '{model}': the file's route changed under an admin change; the admin change stays in force (POST /admin/reload?override=true lets the file win)"
            ));
        }
        Ok((next, warnings))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn provider(id: &str, weight: u32) -> ProviderConfig {
        let mut config = ProviderConfig::new(id, "mock", ["m"]);
        config.weight = weight;
        config
    }

    fn file(providers: &[ProviderConfig]) -> Config {
        Config {
            providers: providers.to_vec(),
            ..Config::default()
        }
    }

    fn ids(providers: &[ProviderConfig]) -> Vec<&str> {
        providers.iter().map(|p| p.id.as_str()).collect()
    }

    #[test]
    fn apply_puts_admin_changes_on_top_of_the_file() {
        let f = file(&[provider("a", 1), provider("b", 1), provider("c", 1)]);
        let mut overlay = Overlay::default();
        overlay.add(&f, provider("x", 1));
        overlay.replace(&f, provider("a", 5));
        overlay.remove(&f, "b");
        let (providers, _) = overlay.apply(&f);
        assert_eq!(ids(&providers), ["a", "c", "x"]);
        assert_eq!(providers[0].weight, 5);
        assert_eq!(overlay.origin("a"), Origin::Override);
        assert_eq!(overlay.origin("x"), Origin::Admin);
        assert_eq!(overlay.origin("c"), Origin::File);
        let summary = overlay.summary();
        assert_eq!(summary.added, ["x"]);
        assert_eq!(summary.overrides, ["a"]);
        assert_eq!(summary.tombstones, ["b"]);

        // Removing an admin-added provider leaves no trace; putting a file
        // entry back as it was drops the override.
        overlay.remove(&f, "x");
        overlay.replace(&f, provider("a", 1));
        overlay.add(&f, provider("b", 1));
        assert!(overlay.is_empty(), "{overlay:?}");
    }

    #[test]
    fn a_file_defining_an_admin_added_id_conflicts_unless_forced() {
        let f = file(&[provider("a", 1)]);
        let mut overlay = Overlay::default();
        overlay.add(&f, provider("x", 1));
        let g = file(&[provider("a", 1), provider("x", 9)]);
        let conflict = overlay.rebase(&g, false).unwrap_err();
        assert_eq!(
            conflict.clashes,
            [("providers[1].id".to_owned(), "x".to_owned())]
        );
        assert!(conflict.to_string().contains("override=true"));
        let (next, warnings) = overlay.rebase(&g, true).unwrap();
        assert!(next.is_empty());
        assert_eq!(warnings.len(), 1);
        assert_eq!(next.apply(&g).0[1].weight, 9);
        // An unrelated reload keeps the admin-added provider.
        let h = file(&[provider("a", 2)]);
        let (next, warnings) = overlay.rebase(&h, false).unwrap();
        assert!(warnings.is_empty());
        assert_eq!(ids(&next.apply(&h).0), ["a", "x"]);
    }

    #[test]
    fn a_file_change_under_an_override_warns_until_resolved_and_the_override_stays() {
        let f = file(&[provider("a", 1), provider("b", 1)]);
        let mut overlay = Overlay::default();
        overlay.replace(&f, provider("a", 5));
        overlay.remove(&f, "b");
        let g = file(&[provider("a", 2), provider("b", 2)]);
        let (next, warnings) = overlay.rebase(&g, false).unwrap();
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        let (providers, _) = next.apply(&g);
        assert_eq!(ids(&providers), ["a"]);
        assert_eq!(providers[0].weight, 5);
        let (next, again) = next.rebase(&g, false).unwrap();
        assert_eq!(again.len(), 2, "{again:?}");
        // Making the admin change again accepts the file's new entry.
        let mut accepted = next.clone();
        accepted.replace(&g, provider("a", 5));
        accepted.remove(&g, "b");
        let (_, quiet) = accepted.rebase(&g, false).unwrap();
        assert!(quiet.is_empty(), "{quiet:?}");
        // Forced, the file wins.
        let (forced, warnings) = overlay.rebase(&g, true).unwrap();
        assert!(forced.is_empty());
        assert_eq!(warnings.len(), 2);
        // A tombstone whose file entry is gone is dropped quietly.
        let h = file(&[provider("a", 1)]);
        let (next, warnings) = overlay.rebase(&h, false).unwrap();
        assert!(warnings.is_empty(), "{warnings:?}");
        assert_eq!(next.summary().tombstones, Vec::<String>::new());
        // An override whose file entry is gone keeps serving.
        let i = file(&[provider("b", 1)]);
        let (next, warnings) = overlay.rebase(&i, false).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(ids(&next.apply(&i).0), ["a"]);
    }

    #[test]
    fn route_overrides() {
        let mut f = file(&[provider("a", 1)]);
        f.routes.insert("m".into(), RouteConfig::default());
        let mut overlay = Overlay::default();
        let route = RouteConfig {
            max_retries: Some(1),
            ..RouteConfig::default()
        };
        overlay.set_route(&f, "m", Some(route.clone()));
        overlay.set_route(&f, "n", Some(route.clone()));
        let (_, routes) = overlay.apply(&f);
        assert_eq!(routes["m"], route);
        assert_eq!(routes["n"], route);
        overlay.set_route(&f, "m", None);
        assert!(!overlay.apply(&f).1.contains_key("m"));
        let mut g = f.clone();
        g.routes.insert(
            "m".into(),
            RouteConfig {
                max_retries: Some(2),
                ..RouteConfig::default()
            },
        );
        let (next, warnings) = overlay.rebase(&g, false).unwrap();
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(!next.apply(&g).1.contains_key("m"));
    }
}
