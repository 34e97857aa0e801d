"""etcd for every job: one client (endpoints, TLS, RBAC, fail-over, require-leader) and one
parser of Patroni's key layout. Below the jobs: the cluster watch, the repack lock, `repack plan`
and `status --cluster` all use it, and none of them imports another job."""
