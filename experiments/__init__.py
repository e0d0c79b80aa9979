"""The studies behind the README's numbers, each a driver run from the repository root as a module, e.g.
`python -m experiments.cifar10_semisup`; the stages they share are experiments.stages. Their results and ledgers
are under experiments/results/."""
