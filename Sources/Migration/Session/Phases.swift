/// A step of a migration on one side. A phase does its work in `run` and undoes what it
/// changed on the local machine in `rollback` — dirty logging, a throttle, a pause, a
/// half-built target — so that a failure anywhere before the commit leaves everything as it
/// was. Phases share what they produce through the side's session object.
protocol MigrationStep: AnyObject {
    associatedtype Session
    /// What `status` shows while this phase runs.
    var phase: MigrationPhase { get }
    func run(_ session: Session) throws
    /// Undoes this phase's local effects; called after a failure, latest phase first, for every
    /// phase that started. Must not throw and must tolerate a `run` that stopped half-way.
    func rollback(_ session: Session)
}

extension MigrationStep {
    func rollback(_ session: Session) {}
}

/// Runs the phases of one side in order and owns the rollback: when one fails, every phase
/// that started is rolled back, latest first — unless `committed()` says the point of no
/// return was passed, after which nothing is undone.
struct PhaseRunner<Session> {
    private var started: [(Session) -> Void] = []
    let session: Session
    let progress: ProgressBox
    let committed: () -> Bool

    init(session: Session, progress: ProgressBox, committed: @escaping () -> Bool) {
        self.session = session
        self.progress = progress
        self.committed = committed
    }

    mutating func run<Step: MigrationStep>(_ step: Step) throws where Step.Session == Session {
        progress.update { $0.phase = step.phase }
        started.append { step.rollback($0) }
        try step.run(session)
    }

    /// Rolls back every phase that started, latest first, unless the migration committed.
    func rollBack() {
        guard !committed() else { return }
        for undo in started.reversed() { undo(session) }
    }
}
