//! ns-cri: a small CRI (runtime.v1) client for scripting containerd's CRI plugin in tests.
//!
//! Every subcommand is one CRI call; output is a plain id, the command's own stdout
//! (exec-sync, exec) or JSON (inspect, inspectp, ps, pods, version). Errors go to stderr,
//! exit 1.

mod stream;

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use hyper_util::rt::TokioIo;
use serde_json::{json, Value};
use tokio::net::UnixStream;
use tonic::transport::{Channel, Endpoint, Uri};

use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;

type Client = RuntimeServiceClient<Channel>;
type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

#[derive(Parser)]
#[command(
    name = "ns-cri",
    about = "Minimal CRI runtime.v1 client (containerd over a unix socket)"
)]
struct Cli {
    /// containerd's gRPC unix socket
    #[arg(long, default_value = "/run/containerd/containerd.sock")]
    address: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum PidMode {
    /// one PID namespace shared by the pod (the pause process is PID 1)
    Pod,
    /// a PID namespace per container
    Container,
    /// the host's PID namespace
    Node,
}

impl PidMode {
    fn cri(self) -> NamespaceMode {
        match self {
            PidMode::Pod => NamespaceMode::Pod,
            PidMode::Container => NamespaceMode::Container,
            PidMode::Node => NamespaceMode::Node,
        }
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Version: runtime name and version (JSON); handy to wait for readiness
    Version,
    /// RunPodSandbox; prints the pod id
    Runp {
        /// runtime handler (containerd's [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.NAME])
        #[arg(long, default_value = "")]
        handler: String,
        #[arg(long)]
        name: String,
        #[arg(long, default_value = "default")]
        namespace: String,
        /// pod uid (default: NAME-uid)
        #[arg(long)]
        uid: Option<String>,
        /// share the host's network namespace (and so need no CNI)
        #[arg(long)]
        host_network: bool,
        /// PID namespace mode of the pod's containers
        #[arg(long, value_enum, default_value = "container")]
        pid_mode: PidMode,
        /// cgroup parent of the pod (cgroupfs path such as /ns-cri-test)
        #[arg(long, default_value = "")]
        cgroup_parent: String,
        /// a privileged pod (its containers may be privileged)
        #[arg(long)]
        privileged: bool,
        /// a sysctl of the pod, KEY=VALUE (repeatable)
        #[arg(long = "sysctl")]
        sysctls: Vec<String>,
    },
    /// CreateContainer in a pod (the pod's config is rebuilt from PodSandboxStatus); prints the container id
    Create {
        pod: String,
        #[arg(long)]
        image: String,
        #[arg(long)]
        name: String,
        /// PID namespace mode; default: the pod's
        #[arg(long, value_enum)]
        pid_mode: Option<PidMode>,
        /// absolute path of the container's CRI log file
        #[arg(long)]
        log: Option<String>,
        /// environment, KEY=VALUE
        #[arg(long = "env", short = 'e')]
        env: Vec<String>,
        #[arg(long)]
        privileged: bool,
        /// memory limit in bytes at creation
        #[arg(long)]
        memory: Option<i64>,
        /// the command (overrides the image's entrypoint and cmd); empty: the image's
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// StartContainer
    Start { id: String },
    /// ExecSync: prints the command's stdout (stderr to stderr), exits with its exit code
    ExecSync {
        id: String,
        /// seconds, 0 = none
        #[arg(long, default_value_t = 0)]
        timeout: i64,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Exec through the streaming server, as kubectl exec: prints the command's output,
    /// exits with its exit code
    Exec {
        id: String,
        /// a terminal (stderr then comes through stdout)
        #[arg(long, short = 't')]
        tty: bool,
        /// pass our stdin (the command must end by itself: the protocol has no end of input)
        #[arg(long, short = 'i')]
        stdin: bool,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// UpdateContainerResources
    Update {
        id: String,
        /// memory limit in bytes
        #[arg(long)]
        memory: Option<i64>,
        #[arg(long)]
        cpu_quota: Option<i64>,
        #[arg(long)]
        cpu_period: Option<i64>,
        #[arg(long)]
        cpu_shares: Option<i64>,
    },
    /// StopContainer
    Stop {
        id: String,
        /// seconds before SIGKILL
        #[arg(long, default_value_t = 10)]
        timeout: i64,
    },
    /// RemoveContainer
    Rm { id: String },
    /// StopPodSandbox
    Stopp { pod: String },
    /// RemovePodSandbox
    Rmp { pod: String },
    /// ContainerStatus (verbose) as JSON: {id, state, pid, status, info}
    Inspect {
        id: String,
        /// print only the pid (0 if not running)
        #[arg(long)]
        pid: bool,
    },
    /// PodSandboxStatus (verbose) as JSON: {id, state, pid, status, info}
    Inspectp {
        pod: String,
        /// print only the pause process's pid (0 if not running)
        #[arg(long)]
        pid: bool,
    },
    /// ListContainers as JSON
    Ps,
    /// ListPodSandbox as JSON
    Pods,
}

async fn connect(path: PathBuf) -> Result<Client> {
    // The URI is a placeholder: the connector always dials the unix socket.
    let channel = Endpoint::try_from("http://[::]:50051")?
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let path = path.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(path).await?)) }
        }))
        .await?;
    Ok(RuntimeServiceClient::new(channel))
}

fn ns_options(host_network: bool, pid: PidMode) -> NamespaceOption {
    NamespaceOption {
        network: if host_network {
            NamespaceMode::Node
        } else {
            NamespaceMode::Pod
        } as i32,
        pid: pid.cri() as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

/// The PodSandboxConfig that CreateContainer wants (containerd 1.6 takes the pod's cgroup
/// parent, hostname, log directory, metadata and annotations from it), rebuilt from the
/// pod's verbose PodSandboxStatus: its info.config is the config the pod was run with, as
/// Go JSON (snake_case names, empty fields omitted, so not deserializable as is).
async fn sandbox_config(c: &mut Client, pod: &str) -> Result<PodSandboxConfig> {
    let r = c
        .pod_sandbox_status(PodSandboxStatusRequest {
            pod_sandbox_id: pod.into(),
            verbose: true,
        })
        .await?
        .into_inner();
    let info: Value = r
        .info
        .get("info")
        .and_then(|i| serde_json::from_str(i).ok())
        .unwrap_or_default();
    let config = &info["config"];
    let text = |p: &str| {
        config
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string()
    };
    let sysctls = config
        .pointer("/linux/sysctls")
        .and_then(Value::as_object)
        .into_iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string()))
        .collect();
    let st = r.status.ok_or("PodSandboxStatus: no status")?;
    let ns = st.linux.and_then(|l| l.namespaces).and_then(|n| n.options);
    Ok(PodSandboxConfig {
        metadata: st.metadata,
        hostname: text("/hostname"),
        log_directory: text("/log_directory"),
        labels: st.labels,
        annotations: st.annotations,
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: text("/linux/cgroup_parent"),
            sysctls,
            security_context: Some(LinuxSandboxSecurityContext {
                namespace_options: ns,
                privileged: config.pointer("/linux/security_context/privileged")
                    == Some(&Value::Bool(true)),
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    })
}

/// status + parsed verbose info (each info value is a JSON document in containerd).
fn with_info(id: &str, state: &str, status: Value, info: HashMap<String, String>) -> Value {
    let info: serde_json::Map<String, Value> = info
        .into_iter()
        .map(|(k, v)| {
            let parsed = serde_json::from_str(&v).unwrap_or(Value::String(v));
            (k, parsed)
        })
        .collect();
    let pid = info
        .get("info")
        .and_then(|i| i.get("pid"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    json!({ "id": id, "state": state, "pid": pid, "status": status, "info": info })
}

/// A status (`inspect`, `inspectp`): its pid alone, or all of it as JSON.
fn show(v: &serde_json::Value, pid: bool) {
    if pid {
        println!("{}", v["pid"]);
    } else {
        print_json(v);
    }
}

/// KEY=VALUE arguments as pairs (a bare KEY: an empty value).
fn key_values(args: &[String]) -> Vec<(String, String)> {
    args.iter()
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (k.to_string(), v.to_string())
        })
        .collect()
}

fn print_json(v: &Value) {
    println!("{}", serde_json::to_string_pretty(v).unwrap());
}

async fn run(cli: Cli) -> Result<ExitCode> {
    let mut c = connect(cli.address).await?;
    match cli.cmd {
        Cmd::Version => {
            let v = c
                .version(VersionRequest {
                    version: "v1".into(),
                })
                .await?
                .into_inner();
            print_json(&serde_json::to_value(v)?);
        }
        Cmd::Runp {
            handler,
            name,
            namespace,
            uid,
            host_network,
            pid_mode,
            cgroup_parent,
            privileged,
            sysctls,
        } => {
            let config = PodSandboxConfig {
                metadata: Some(PodSandboxMetadata {
                    uid: uid.unwrap_or_else(|| format!("{name}-uid")),
                    name: name.clone(),
                    namespace,
                    attempt: 0,
                }),
                // With the host network the pod has the host's UTS namespace: no hostname to set.
                hostname: if host_network {
                    String::new()
                } else {
                    name.clone()
                },
                linux: Some(LinuxPodSandboxConfig {
                    cgroup_parent,
                    sysctls: key_values(&sysctls).into_iter().collect(),
                    security_context: Some(LinuxSandboxSecurityContext {
                        namespace_options: Some(ns_options(host_network, pid_mode)),
                        privileged,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let r = c
                .run_pod_sandbox(RunPodSandboxRequest {
                    config: Some(config),
                    runtime_handler: handler,
                })
                .await?;
            println!("{}", r.into_inner().pod_sandbox_id);
        }
        Cmd::Create {
            pod,
            image,
            name,
            pid_mode,
            log,
            env,
            privileged,
            memory,
            command,
        } => {
            let sandbox = sandbox_config(&mut c, &pod).await?;
            let sec = sandbox
                .linux
                .as_ref()
                .and_then(|l| l.security_context.as_ref());
            let mut ns = sec
                .and_then(|s| s.namespace_options.clone())
                .unwrap_or_default();
            if let Some(p) = pid_mode {
                ns.pid = p.cri() as i32;
            }
            let envs = key_values(&env)
                .into_iter()
                .map(|(key, value)| KeyValue { key, value })
                .collect();
            let config = ContainerConfig {
                metadata: Some(ContainerMetadata { name, attempt: 0 }),
                image: Some(ImageSpec {
                    image,
                    ..Default::default()
                }),
                command,
                envs,
                log_path: log.unwrap_or_default(),
                linux: Some(LinuxContainerConfig {
                    resources: memory.map(|m| LinuxContainerResources {
                        memory_limit_in_bytes: m,
                        ..Default::default()
                    }),
                    security_context: Some(LinuxContainerSecurityContext {
                        namespace_options: Some(ns),
                        privileged,
                        ..Default::default()
                    }),
                }),
                ..Default::default()
            };
            let r = c
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod,
                    config: Some(config),
                    sandbox_config: Some(sandbox),
                })
                .await?;
            println!("{}", r.into_inner().container_id);
        }
        Cmd::Start { id } => {
            c.start_container(StartContainerRequest { container_id: id })
                .await?;
        }
        Cmd::ExecSync {
            id,
            timeout,
            command,
        } => {
            let r = c
                .exec_sync(ExecSyncRequest {
                    container_id: id,
                    cmd: command,
                    timeout,
                })
                .await?
                .into_inner();
            use std::io::Write;
            std::io::stdout().write_all(&r.stdout)?;
            std::io::stderr().write_all(&r.stderr)?;
            std::io::stdout().flush()?;
            return Ok(ExitCode::from(r.exit_code.clamp(0, 255) as u8));
        }
        Cmd::Exec {
            id,
            tty,
            stdin,
            command,
        } => {
            let r = c
                .exec(ExecRequest {
                    container_id: id,
                    cmd: command,
                    tty,
                    stdin,
                    stdout: true,
                    stderr: !tty,
                })
                .await?
                .into_inner();
            let code = stream::exec(&r.url, stdin, tty)?;
            return Ok(ExitCode::from(code.clamp(0, 255) as u8));
        }
        Cmd::Update {
            id,
            memory,
            cpu_quota,
            cpu_period,
            cpu_shares,
        } => {
            let resources = LinuxContainerResources {
                memory_limit_in_bytes: memory.unwrap_or(0),
                cpu_quota: cpu_quota.unwrap_or(0),
                cpu_period: cpu_period.unwrap_or(0),
                cpu_shares: cpu_shares.unwrap_or(0),
                ..Default::default()
            };
            c.update_container_resources(UpdateContainerResourcesRequest {
                container_id: id,
                linux: Some(resources),
                ..Default::default()
            })
            .await?;
        }
        Cmd::Stop { id, timeout } => {
            c.stop_container(StopContainerRequest {
                container_id: id,
                timeout,
            })
            .await?;
        }
        Cmd::Rm { id } => {
            c.remove_container(RemoveContainerRequest { container_id: id })
                .await?;
        }
        Cmd::Stopp { pod } => {
            c.stop_pod_sandbox(StopPodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await?;
        }
        Cmd::Rmp { pod } => {
            c.remove_pod_sandbox(RemovePodSandboxRequest {
                pod_sandbox_id: pod,
            })
            .await?;
        }
        Cmd::Inspect { id, pid } => {
            let r = c
                .container_status(ContainerStatusRequest {
                    container_id: id.clone(),
                    verbose: true,
                })
                .await?
                .into_inner();
            let state = r
                .status
                .as_ref()
                .and_then(|s| ContainerState::try_from(s.state).ok());
            let state = state.map_or("", |s| s.as_str_name());
            show(
                &with_info(&id, state, serde_json::to_value(&r.status)?, r.info),
                pid,
            );
        }
        Cmd::Inspectp { pod, pid } => {
            let r = c
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod.clone(),
                    verbose: true,
                })
                .await?
                .into_inner();
            let state = r
                .status
                .as_ref()
                .and_then(|s| PodSandboxState::try_from(s.state).ok());
            let state = state.map_or("", |s| s.as_str_name());
            show(
                &with_info(&pod, state, serde_json::to_value(&r.status)?, r.info),
                pid,
            );
        }
        Cmd::Ps => {
            let r = c
                .list_containers(ListContainersRequest { filter: None })
                .await?
                .into_inner();
            print_json(&serde_json::to_value(r.containers)?);
        }
        Cmd::Pods => {
            let r = c
                .list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await?
                .into_inner();
            print_json(&serde_json::to_value(r.items)?);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    match rt.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            match e.downcast_ref::<tonic::Status>() {
                Some(s) => eprintln!("ns-cri: {:?}: {}", s.code(), s.message()),
                None => {
                    let mut msg = e.to_string();
                    let mut src = e.source();
                    while let Some(s) = src {
                        if !msg.ends_with(&s.to_string()) {
                            msg = format!("{msg}: {s}");
                        }
                        src = s.source();
                    }
                    eprintln!("ns-cri: {msg}")
                }
            }
            ExitCode::FAILURE
        }
    }
}
