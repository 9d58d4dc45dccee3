import Machine

/// Every way a migration can fail, each a one-line message naming what went wrong.
public enum MigrationError: Error, Equatable, CustomStringConvertible {
    /// A bad option or endpoint.
    case usage(String)
    /// Connecting, listening, or the connection dropped.
    case connection(String)
    /// The stream is malformed: bad magic, checksum, length, unknown required section.
    case stream(String)
    /// Authentication failed (wrong key, missing key).
    case auth(String)
    /// A pre-check refused the migration before memory moved.
    case refused(String)
    /// The peer reported an error; the text is the peer's.
    case peer(String)
    /// Cancelled by the user (`swiftvmm cancel`, Ctrl-C).
    case cancelled(String)
    /// Did not converge within `--max-time`.
    case timeout(String)
    /// The peer stopped answering for `--timeout` seconds.
    case stalled(String)
    /// The hand-off broke where neither side can know the outcome: this side keeps its
    /// complete copy of the guest paused for the operator (`MigrationPhase.inDoubt`).
    case inDoubt(String)
    /// The local machine failed (KVM, device state).
    case machine(String)

    /// A stall, said with the phase it happened in and what became of the guest.
    func naming(phase: MigrationPhase, guest: String) -> MigrationError {
        guard case .stalled(let why) = self else { return self }
        return .stalled("\(why) (in \(phase.rawValue)); \(guest)")
    }

    public var description: String {
        switch self {
        case .usage(let s), .connection(let s), .stream(let s), .auth(let s), .refused(let s),
             .machine(let s), .timeout(let s), .stalled(let s), .inDoubt(let s):
            return s
        case .peer(let s): return "peer: \(s)"
        case .cancelled(let s): return s
        }
    }
}

extension Error {
    /// A stall, said with the phase it happened in; any other error as it is.
    func naming(phase: MigrationPhase, guest: String) -> Error {
        (self as? MigrationError)?.naming(phase: phase, guest: guest) ?? self
    }
}
