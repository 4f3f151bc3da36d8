//! A compiler kept across edits costs what the edit touches, counted in
//! machine-independent units ([`CompileStats`]): pods re-signed, identities
//! changed, (rule, identity) pairs evaluated. Correctness of the same paths
//! is held by the edit-sequence proptest in `reference_equivalence.rs`.

mod support;

use palisade_agent::{
    index::Index,
    policy::{CompileStats, Compiler, Profile, compile},
};
use support::{canonical, node, ns, objects, pod};

const PODS: usize = 300;
const POLICIES: usize = 40;

fn policy(i: usize, app: usize, cidr: &str) -> String {
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{i}, namespace: ns{ns}}}\n\
         spec:\n  podSelector: {{matchLabels: {{app: a{app}}}}}\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{app: a{peer}}}}}}}, {{namespaceSelector: {{matchLabels: {{team: t{team}}}}}}}]\n    ports: [{{port: http}}]\n  - from: [{{ipBlock: {{cidr: \"{cidr}\"}}}}]\n",
        ns = i % 5,
        peer = (app + 1) % 20,
        team = i % 3,
    )
}

/// 300 pods in 5 namespaces (60 on this node), 40 policies.
fn cluster() -> Index {
    let mut yaml = String::new();
    for n in 0..5 {
        yaml.push_str(&ns(&format!("ns{n}"), &format!("team: t{}", n % 3)));
    }
    for i in 0..PODS {
        let mut p = pod(
            &format!("ns{}", i % 5),
            &format!("p{i}"),
            &format!("app: a{}, v: v{}", i % 20, i % 3),
            &format!("10.1.{}.{}", i / 200, i % 200 + 1),
        );
        if i % 5 != 0 {
            p = p.replace("nodeName: n1", "nodeName: n2");
        }
        yaml.push_str(&p);
    }
    for i in 0..POLICIES {
        yaml.push_str(&policy(i, i % 20, &format!("192.168.{i}.0/24")));
    }
    let mut index = Index::default();
    for o in objects(&yaml) {
        index.apply(&o).expect("valid");
    }
    index
}

fn apply(index: &mut Index, yaml: &str) {
    for o in objects(yaml) {
        index.apply(&o).expect("valid");
    }
}

/// Compiles with the kept compiler, checks the result against a fresh
/// compile, and returns what it cost.
fn step(compiler: &mut Compiler, index: &Index) -> CompileStats {
    let profile = Profile::default();
    let kept = compiler.compile(index.model(), &node(), &profile);
    let fresh = compile(index.model(), &node(), &profile);
    assert_eq!(canonical(&kept), canonical(&fresh), "kept == fresh");
    compiler.stats()
}

#[test]
fn each_edit_costs_what_it_touches() {
    let mut index = cluster();
    let mut compiler = Compiler::default();
    let first = step(&mut compiler, &index);
    assert_eq!(first.pods_signed, PODS, "the first compile signs every pod");
    let rules = first.rules_cached;
    assert!(rules > 10, "the policies have rules in use: {first:?}");
    let identities = first.rule_evaluations / rules;
    assert!(
        identities > 60,
        "pods share identities, CIDRs have their own: {first:?}"
    );

    let unchanged = step(&mut compiler, &index);
    assert_eq!(
        unchanged,
        CompileStats {
            pods_signed: 0,
            identities_changed: 0,
            rule_evaluations: 0,
            rules_cached: rules,
        },
        "nothing changed, nothing recomputed"
    );

    // One pod relabelled: that pod alone is re-signed, and each rule looks
    // at the identity it left and the one it joined.
    apply(
        &mut index,
        &pod("ns1", "p1", "app: a7, v: v9", "10.1.0.2").replace("nodeName: n1", "nodeName: n2"),
    );
    let relabel = step(&mut compiler, &index);
    assert_eq!(relabel.pods_signed, 1, "{relabel:?}");
    assert!(relabel.identities_changed <= 2, "{relabel:?}");
    assert!(
        relabel.rule_evaluations <= 2 * relabel.rules_cached,
        "{relabel:?}"
    );

    // A namespace relabelled: no pod is re-signed; the identities of that
    // namespace are looked at again by every rule, nothing else is.
    apply(&mut index, &ns("ns2", "team: t1"));
    let ns_relabel = step(&mut compiler, &index);
    assert_eq!(ns_relabel.pods_signed, 0, "{ns_relabel:?}");
    assert!(
        ns_relabel.identities_changed > 0 && ns_relabel.identities_changed < identities / 2,
        "{ns_relabel:?}"
    );
    assert_eq!(
        ns_relabel.rule_evaluations,
        ns_relabel.identities_changed * ns_relabel.rules_cached,
        "each rule looks at each identity of the namespace once: {ns_relabel:?}"
    );

    // One policy edited (same CIDR, other peers, still selecting local
    // pods): its new rule is matched against every identity once; no pod is
    // re-signed, no other rule is re-evaluated.
    apply(&mut index, &policy(0, 5, "192.168.0.0/24"));
    let edit = step(&mut compiler, &index);
    assert_eq!(edit.pods_signed, 0, "{edit:?}");
    assert_eq!(edit.identities_changed, 0, "{edit:?}");
    assert!(
        edit.rule_evaluations > 0 && edit.rule_evaluations <= 2 * identities,
        "{edit:?}"
    );

    // A policy naming a new CIDR changes which CIDRs contain each address:
    // every pod is re-signed (the one edit that touches everything). Only
    // policies of namespaces with local pods (ns0 here) count.
    apply(&mut index, &policy(5, 5, "10.1.0.0/24"));
    let cidr = step(&mut compiler, &index);
    assert_eq!(cidr.pods_signed, PODS, "{cidr:?}");
}

/// A pod whose address another pod took (and later gave back) must not
/// come back with the identity it had before: that id was released while
/// it was out, and a pod signed meanwhile with the same signature got a
/// new one. Both must share one identity, as a fresh compile gives them.
#[test]
fn an_address_taken_and_given_back_keeps_identities_shared() {
    let mut compiler = Compiler::default();
    let mut index = Index::default();
    let a = pod("x", "a", "app: web", "10.1.0.1");
    let b = |ip: &str| pod("x", "b", "app: db", ip);
    apply(&mut index, &format!("{}{a}{}", ns("x", ""), b("10.1.0.9")));
    step(&mut compiler, &index);
    // b takes a's address (b wins: later in pod order): a's identity goes.
    apply(&mut index, &b("10.1.0.1"));
    step(&mut compiler, &index);
    // c, like a, appears; b gives the address back to a.
    apply(
        &mut index,
        &format!("{}{}", pod("x", "c", "app: web", "10.1.0.3"), b("10.1.0.9")),
    );
    step(&mut compiler, &index);
}
