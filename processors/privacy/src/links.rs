//! Declared identity links: identifiers a tenant says name one person.
//!
//! A learner is often known to two systems: Moodle logs carry the LMS's
//! user id, and Moodle's xAPI plugin (logstore_xapi) describes the same
//! person as an xAPI account whose `homePage` is the Moodle site and whose
//! `name` is that user id. Without a link they are two subjects with two
//! keys and two pseudonyms, and an erasure of one leaves the other. A link
//! makes the privacy processor resolve both to one *canonical* identifier
//! before it looks the subject up, so they share one key and one pseudonym,
//! and one request for either identifier erases (or exports) the person.
//!
//! What is linked: an `account` whose `homePage` equals a declared LMS site
//! (trailing `/` ignored) becomes the `user_id` it names. What is not: emails
//! (`mbox`) — an address can be reassigned, and its local part is not an
//! LMS user id — nor `openid`, nor accounts of undeclared sites. Links are
//! per tenant: the same site declared by two tenants still gives two
//! unlinkable pseudonyms, one per tenant.
//!
//! Links are configuration, so changing them changes which key new events
//! are sealed under; declare them before the first event of the tenant.

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;

/// One link rule.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct IdentityLink {
    /// The LMS site: xAPI accounts with this `homePage` are its users.
    pub account_home_page: String,
    /// The identifier kind the account's `name` is (default `user_id`).
    #[serde(default = "default_kind")]
    pub as_kind: String,
}

/// `user_id`: what Moodle's logstore_xapi puts in `account.name`.
fn default_kind() -> String {
    "user_id".into()
}

/// Every tenant's links (`settings.identity_links`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct IdentityLinks(pub BTreeMap<String, Vec<IdentityLink>>);

fn site(url: &str) -> &str {
    url.trim_end_matches('/')
}

impl IdentityLinks {
    /// The identifier `(kind, id)` of `tenant` resolves to. Accounts are
    /// written `homePage|name` (as the collector writes them).
    pub fn canonical<'a>(
        &self,
        tenant: &str,
        kind: &'a str,
        id: &'a str,
    ) -> (Cow<'a, str>, Cow<'a, str>) {
        if kind == "account"
            && let Some(rules) = self.0.get(tenant)
            && let Some((home_page, name)) = id.rsplit_once('|')
            && let Some(rule) = rules
                .iter()
                .find(|r| site(&r.account_home_page) == site(home_page))
        {
            return (Cow::Owned(rule.as_kind.clone()), Cow::Borrowed(name));
        }
        (Cow::Borrowed(kind), Cow::Borrowed(id))
    }

    /// Every problem with the rules, at once.
    ///
    /// # Errors
    /// One line per problem.
    pub fn check(&self) -> Result<(), Vec<String>> {
        let mut problems = Vec::new();
        for (tenant, rules) in &self.0 {
            for rule in rules {
                if !rule.account_home_page.contains("://") {
                    problems.push(format!(
                        "identity_links.{tenant}: `{}` is not a site URL",
                        rule.account_home_page
                    ));
                }
                if rule.as_kind == "account" || rule.as_kind.is_empty() {
                    problems.push(format!(
                        "identity_links.{tenant}: an account must link to another identifier kind, not `{}`",
                        rule.as_kind
                    ));
                }
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn links() -> IdentityLinks {
        IdentityLinks(BTreeMap::from([(
            "northwind-uni".to_string(),
            vec![IdentityLink {
                account_home_page: "https://moodle.northwind-uni.example/".into(),
                as_kind: default_kind(),
            }],
        )]))
    }

    #[test]
    fn an_account_of_a_declared_site_is_the_user_it_names() {
        let (kind, id) = links().canonical(
            "northwind-uni",
            "account",
            "https://moodle.northwind-uni.example|1014",
        );
        assert_eq!((kind.as_ref(), id.as_ref()), ("user_id", "1014"));
    }

    #[test]
    fn other_sites_tenants_and_kinds_stay_as_they_are() {
        let l = links();
        for (tenant, kind, id) in [
            ("northwind-uni", "account", "https://other.example|1014"),
            (
                "riverside-college",
                "account",
                "https://moodle.northwind-uni.example|1014",
            ),
            ("northwind-uni", "mbox", "mailto:1014@northwind-uni.example"),
            ("northwind-uni", "user_id", "1014"),
        ] {
            let (k, i) = l.canonical(tenant, kind, id);
            assert_eq!((k.as_ref(), i.as_ref()), (kind, id));
        }
    }

    #[test]
    fn rules_are_checked_all_at_once() {
        let bad = IdentityLinks(BTreeMap::from([(
            "t".to_string(),
            vec![IdentityLink {
                account_home_page: "moodle".into(),
                as_kind: "account".into(),
            }],
        )]));
        assert_eq!(
            bad.check().unwrap_err(),
            [
                "identity_links.t: `moodle` is not a site URL",
                "identity_links.t: an account must link to another identifier kind, not `account`",
            ]
        );
    }
}
