import Glibc
import Synchronization

/// Test-only fault injection: `SWIFTVMM_FAULT=SIDE:POINT:ACTION` (several comma-separated)
/// makes this process crash, stall or close its connection at a named point of a migration, so
/// that the fault suite can prove that exactly one copy of the guest runs afterwards.
///
/// SIDE is `source` or `target`; ACTION `crash` (SIGKILL itself), `stall` (SIGSTOP itself: the
/// peer sees silence), or `close` (shut the connection down and carry on into the error path).
/// Not for production: the variable is read once, at the first migration.
public enum FaultPoint: String, CaseIterable, Sendable {
    case afterHello = "after-hello"
    case afterPrecheck = "after-precheck"
    /// After the first page batch of round 0.
    case midRound0 = "mid-round-0"
    /// After the first page batch of a later round.
    case midRoundN = "mid-round-n"
    /// `--connections N`: after the first page batch on each extra data connection (`close`
    /// cuts only that connection).
    case channelMidRound = "channel-mid-round"
    /// Source: the state is sent; target: the state is loaded, `ready` not yet sent.
    case afterState = "after-state"
    /// Source: `ready` received, `go` not yet sent; target: `ready` sent.
    case afterReady = "after-ready"
    /// Source: `go` sent; target: `go` received, the guest not yet resumed.
    case afterGo = "after-go"
    /// Target: the guest resumed, `running` not yet sent.
    case beforeRunning = "before-running"
}

public enum FaultAction: String, CaseIterable, Sendable {
    case crash, stall, close
}

enum Faults {
    struct Rule {
        var side: Auth.Role
        var point: FaultPoint
        var action: FaultAction
    }

    static let rules: [Rule] = parse(getenv("SWIFTVMM_FAULT").map { String(cString: $0) } ?? "")

    static func parse(_ text: String) -> [Rule] {
        text.split(separator: ",").compactMap { spec in
            let parts = spec.split(separator: ":").map(String.init)
            guard parts.count == 3, let point = FaultPoint(rawValue: parts[1]), let action = FaultAction(rawValue: parts[2]) else {
                return nil
            }
            switch parts[0] {
            case "source": return Rule(side: .source, point: point, action: action)
            case "target": return Rule(side: .target, point: point, action: action)
            default: return nil
            }
        }
    }

    private static let fired = Mutex<Set<String>>([])

    /// Acts the first time this process reaches the point (threads that each reach it, such
    /// as the data connections of `--connections N`, fault once between them).
    static func hitOnce(_ point: FaultPoint, _ side: Auth.Role, _ connection: Connection?) {
        guard rules.contains(where: { $0.side == side && $0.point == point }),
              fired.withLock({ $0.insert(point.rawValue).inserted }) else { return }
        hit(point, side, connection)
    }

    /// Acts when a rule names this side and point.
    static func hit(_ point: FaultPoint, _ side: Auth.Role, _ connection: Connection?) {
        for r in rules where r.side == side && r.point == point {
            switch r.action {
            case .crash: kill(getpid(), SIGKILL)
            case .stall: kill(getpid(), SIGSTOP)
            case .close: connection?.abort()
            }
        }
    }
}
