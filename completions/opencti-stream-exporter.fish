# Print an optspec for argparse to handle cmd's options that are independent of any subcommand.
function __fish_opencti_stream_exporter_global_optspecs
    string join \n c/config= state= q/quiet v/verbose h/help V/version
end

function __fish_opencti_stream_exporter_needs_command
    # Figure out if the current invocation already has a command.
    set -l cmd (commandline -opc)
    set -e cmd[1]
    argparse -s (__fish_opencti_stream_exporter_global_optspecs) -- $cmd 2>/dev/null
    or return
    if set -q argv[1]
        # Also print the command, so this can be used to figure out what it is.
        echo $argv[1]
        return 1
    end
    return 0
end

function __fish_opencti_stream_exporter_using_subcommand
    set -l cmd (__fish_opencti_stream_exporter_needs_command)
    test -z "$cmd"
    and return 1
    contains -- $cmd[1] $argv
end

complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -s c -l config -d 'YAML configuration file [default: ./config.yml when present]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -l state -d 'State file [default: `state.path`, else next to the config file]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -s q -l quiet -d 'Print only warnings and errors'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -s v -l verbose -d 'Print more (-v: debug, -vv: trace)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -s V -l version -d 'Print version'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -f -a "run" -d 'Export the live stream: follow it, write batch files, save the cursor'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -f -a "state" -d 'Show or reset the saved state (cursor, file count)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -f -a "check-stream" -d 'Check the configuration, OpenCTI, the stream and the storage, item by item'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_needs_command" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -l from -d 'Start after this position on a first run: an ISO date with a zone, epoch milliseconds, or `<ms>-<seq>`' -r
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -l until -d 'Stop once the stream has passed this position (a date, epoch ms, `<ms>-<seq>`, or `now`)' -r
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -l metrics-textfile -d 'At exit, write the metrics to this file (Prometheus text format, for node-exporter\'s textfile collector)' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -l output-dir -d 'Write to this directory instead of the configured destination' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -l consumer-count -d 'Worker threads that turn events into lines [default: `connector.consumer_count`]' -r
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -s c -l config -d 'YAML configuration file [default: ./config.yml when present]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -l state -d 'State file [default: `state.path`, else next to the config file]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -l once -d 'Stop once caught up with the stream head announced at connection'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -l accept-gap -d 'Continue when the saved cursor is older than what the server retains, recording the gap in the state'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -s q -l quiet -d 'Print only warnings and errors'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -s v -l verbose -d 'Print more (-v: debug, -vv: trace)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand run" -s V -l version -d 'Print version'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -s c -l config -d 'YAML configuration file [default: ./config.yml when present]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -l state -d 'State file [default: `state.path`, else next to the config file]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -s q -l quiet -d 'Print only warnings and errors'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -s v -l verbose -d 'Print more (-v: debug, -vv: trace)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -s h -l help -d 'Print help'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -s V -l version -d 'Print version'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -f -a "show" -d 'Print the saved state: cursor, next file number, pending upload, last run'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -f -a "reset" -d 'Reset the stream position (the file numbering is kept), optionally to a given cursor'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -f -a "import" -d 'Take over from the reference Python connector: read its state from OpenCTI and save it as this tool\'s state'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and not __fish_seen_subcommand_from show reset import help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from show" -s c -l config -d 'YAML configuration file [default: ./config.yml when present]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from show" -l state -d 'State file [default: `state.path`, else next to the config file]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from show" -l json -d 'Print JSON for scripts'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from show" -s q -l quiet -d 'Print only warnings and errors'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from show" -s v -l verbose -d 'Print more (-v: debug, -vv: trace)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from show" -s h -l help -d 'Print help'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from show" -s V -l version -d 'Print version'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -l start-from -d 'Resume after this position: an ISO date with a zone, epoch milliseconds, or `<ms>-<seq>`' -r
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -l file-count -d 'Number of the last file the importer has read (the next file is N+1); never lower than what the export stored' -r
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -s c -l config -d 'YAML configuration file [default: ./config.yml when present]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -l state -d 'State file [default: `state.path`, else next to the config file]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -s y -l yes -d 'Do not ask for confirmation'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -l importer-was-reset -d 'The importer\'s own file count was reset too: allow a `--file-count` lower than what the export stored'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -s q -l quiet -d 'Print only warnings and errors'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -s v -l verbose -d 'Print more (-v: debug, -vv: trace)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from reset" -s V -l version -d 'Print version'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from import" -l connector-id -d 'Id of the reference connector on OpenCTI [default: `connector.id`]' -r
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from import" -s c -l config -d 'YAML configuration file [default: ./config.yml when present]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from import" -l state -d 'State file [default: `state.path`, else next to the config file]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from import" -l from-opencti -d 'Read the state from OpenCTI, where the reference connector kept it'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from import" -l replace -d 'Replace an existing state file (never with a lower file count)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from import" -s q -l quiet -d 'Print only warnings and errors'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from import" -s v -l verbose -d 'Print more (-v: debug, -vv: trace)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from import" -s h -l help -d 'Print help (see more with \'--help\')'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from import" -s V -l version -d 'Print version'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from help" -f -a "show" -d 'Print the saved state: cursor, next file number, pending upload, last run'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from help" -f -a "reset" -d 'Reset the stream position (the file numbering is kept), optionally to a given cursor'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from help" -f -a "import" -d 'Take over from the reference Python connector: read its state from OpenCTI and save it as this tool\'s state'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand state; and __fish_seen_subcommand_from help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand check-stream" -s c -l config -d 'YAML configuration file [default: ./config.yml when present]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand check-stream" -l state -d 'State file [default: `state.path`, else next to the config file]' -r -F
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand check-stream" -l json -d 'Print JSON for machines'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand check-stream" -l verify -d 'Also read back every exported file: metadata, SHA-256, lines, and the number sequence'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand check-stream" -s q -l quiet -d 'Print only warnings and errors'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand check-stream" -s v -l verbose -d 'Print more (-v: debug, -vv: trace)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand check-stream" -s h -l help -d 'Print help'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand check-stream" -s V -l version -d 'Print version'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand help; and not __fish_seen_subcommand_from run state check-stream help" -f -a "run" -d 'Export the live stream: follow it, write batch files, save the cursor'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand help; and not __fish_seen_subcommand_from run state check-stream help" -f -a "state" -d 'Show or reset the saved state (cursor, file count)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand help; and not __fish_seen_subcommand_from run state check-stream help" -f -a "check-stream" -d 'Check the configuration, OpenCTI, the stream and the storage, item by item'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand help; and not __fish_seen_subcommand_from run state check-stream help" -f -a "help" -d 'Print this message or the help of the given subcommand(s)'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand help; and __fish_seen_subcommand_from state" -f -a "show" -d 'Print the saved state: cursor, next file number, pending upload, last run'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand help; and __fish_seen_subcommand_from state" -f -a "reset" -d 'Reset the stream position (the file numbering is kept), optionally to a given cursor'
complete -c opencti-stream-exporter -n "__fish_opencti_stream_exporter_using_subcommand help; and __fish_seen_subcommand_from state" -f -a "import" -d 'Take over from the reference Python connector: read its state from OpenCTI and save it as this tool\'s state'
