import Synchronization

/// How either side of a migration is told to stop before the commit — `swiftvmm cancel`,
/// Ctrl-C, `quit` — and how the migration thread notices. One per migration.
public final class Cancellation: Sendable {
    private struct State {
        var reason: String?
        var connection: Connection?
    }
    private let state = Mutex(State())
    /// An interrupt shuts only the reading half: this side can still say why it stopped.
    private let readsOnly: Bool

    /// With `interruptReadsOnly`, an interrupt wakes a blocked read but leaves the connection
    /// writable, so the side that cancels can send its reason.
    public init(interruptReadsOnly: Bool = false) { readsOnly = interruptReadsOnly }

    /// Records `reason` (the first one wins). With `interrupt`, a blocked read or write on the
    /// migration's connection fails at once (a handshake or hand-off waiting on a silent peer);
    /// otherwise the migration notices at its next `check()` and can end politely.
    public func cancel(_ reason: String, interrupt: Bool) {
        let conn = state.withLock { s -> Connection? in
            if s.reason == nil { s.reason = reason }
            return interrupt ? s.connection : nil
        }
        if readsOnly { conn?.abortReads() } else { conn?.abort() }
    }

    /// The connection `cancel(…, interrupt: true)` aborts.
    func attach(_ connection: Connection?) { state.withLock { $0.connection = connection } }

    public var reason: String? { state.withLock { $0.reason } }
    public var isCancelled: Bool { reason != nil }

    /// Throws `MigrationError.cancelled` once cancelled.
    func check() throws {
        if let r = reason { throw MigrationError.cancelled(r) }
    }

    /// `error` as the user should see it: a cancellation, when one caused it.
    func explain(_ error: Error) -> Error {
        if let r = reason, (error as? MigrationError)?.isCancellation != true { return MigrationError.cancelled(r) }
        return error
    }
}
