// Package instance owns the registry of KooGallery pay-per-use instances (DESIGN.md §3, §4 step 3): what an
// instance is, its lifecycle, and which instance an event belongs to.
//
// It owns:
//   - Spec, an instance as written in the config file, the CLI's files and PUT /v1/instances/{id}, and its
//     validation (every problem at once, each with its path);
//   - Instance, the stored form: its life [started_at, released_at), its status, and its history of timestamped
//     Changes (CREATED, FROZEN, UNFROZEN, RELEASED), so that the hour close and the push can ask what was true at
//     any instant, not only now;
//   - the lifecycle rules, in one pure function (decide);
//   - the Registry service that applies specs through the Store port, and the HTTP handler.
//
// It guarantees:
//   - matching is unambiguous: no two instances of the same (subject, meter) have overlapping lives, whatever
//     their status, so an event at time t matches at most one instance (Instance.Contains);
//   - RELEASED is final: once released, an instance never changes again; applying the same spec again is
//     harmless (no write, no new Change);
//   - meter, subject, sku and started_at are fixed at creation, since usage already matched and billed under them
//     could not be re-attributed;
//   - each apply is atomic, also between processes (the CLI while serve runs): the Store runs the decision inside
//     one write transaction that holds the instance and every other instance of its (subject, meter).
//
// The package declares the port it needs (Store); storage adapters implement it.
package instance
