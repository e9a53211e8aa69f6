
using namespace System.Management.Automation
using namespace System.Management.Automation.Language

Register-ArgumentCompleter -Native -CommandName 'opencti-stream-exporter' -ScriptBlock {
    param($wordToComplete, $commandAst, $cursorPosition)

    $commandElements = $commandAst.CommandElements
    $command = @(
        'opencti-stream-exporter'
        for ($i = 1; $i -lt $commandElements.Count; $i++) {
            $element = $commandElements[$i]
            if ($element -isnot [StringConstantExpressionAst] -or
                $element.StringConstantType -ne [StringConstantType]::BareWord -or
                $element.Value.StartsWith('-') -or
                $element.Value -eq $wordToComplete) {
                break
        }
        $element.Value
    }) -join ';'

    $completions = @(switch ($command) {
        'opencti-stream-exporter' {
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--state', '--state', [CompletionResultType]::ParameterName, 'State file [default: `state.path`, else next to the config file]')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('run', 'run', [CompletionResultType]::ParameterValue, 'Export the live stream: follow it, write batch files, save the cursor')
            [CompletionResult]::new('state', 'state', [CompletionResultType]::ParameterValue, 'Show or reset the saved state (cursor, file count)')
            [CompletionResult]::new('check-stream', 'check-stream', [CompletionResultType]::ParameterValue, 'Check the configuration, OpenCTI, the stream and the storage, item by item')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'opencti-stream-exporter;run' {
            [CompletionResult]::new('--from', '--from', [CompletionResultType]::ParameterName, 'Start after this position on a first run: an ISO date with a zone, epoch milliseconds, or `<ms>-<seq>`')
            [CompletionResult]::new('--until', '--until', [CompletionResultType]::ParameterName, 'Stop once the stream has passed this position (a date, epoch ms, `<ms>-<seq>`, or `now`)')
            [CompletionResult]::new('--metrics-textfile', '--metrics-textfile', [CompletionResultType]::ParameterName, 'At exit, write the metrics to this file (Prometheus text format, for node-exporter''s textfile collector)')
            [CompletionResult]::new('--output-dir', '--output-dir', [CompletionResultType]::ParameterName, 'Write to this directory instead of the configured destination')
            [CompletionResult]::new('--consumer-count', '--consumer-count', [CompletionResultType]::ParameterName, 'Worker threads that turn events into lines [default: `connector.consumer_count`]')
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--state', '--state', [CompletionResultType]::ParameterName, 'State file [default: `state.path`, else next to the config file]')
            [CompletionResult]::new('--once', '--once', [CompletionResultType]::ParameterName, 'Stop once caught up with the stream head announced at connection')
            [CompletionResult]::new('--accept-gap', '--accept-gap', [CompletionResultType]::ParameterName, 'Continue when the saved cursor is older than what the server retains, recording the gap in the state')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opencti-stream-exporter;state' {
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--state', '--state', [CompletionResultType]::ParameterName, 'State file [default: `state.path`, else next to the config file]')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'Print the saved state: cursor, next file number, pending upload, last run')
            [CompletionResult]::new('reset', 'reset', [CompletionResultType]::ParameterValue, 'Reset the stream position (the file numbering is kept), optionally to a given cursor')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Take over from the reference Python connector: read its state from OpenCTI and save it as this tool''s state')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'opencti-stream-exporter;state;show' {
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--state', '--state', [CompletionResultType]::ParameterName, 'State file [default: `state.path`, else next to the config file]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON for scripts')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opencti-stream-exporter;state;reset' {
            [CompletionResult]::new('--start-from', '--start-from', [CompletionResultType]::ParameterName, 'Resume after this position: an ISO date with a zone, epoch milliseconds, or `<ms>-<seq>`')
            [CompletionResult]::new('--file-count', '--file-count', [CompletionResultType]::ParameterName, 'Number of the last file the importer has read (the next file is N+1); never lower than what the export stored')
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--state', '--state', [CompletionResultType]::ParameterName, 'State file [default: `state.path`, else next to the config file]')
            [CompletionResult]::new('-y', '-y', [CompletionResultType]::ParameterName, 'Do not ask for confirmation')
            [CompletionResult]::new('--yes', '--yes', [CompletionResultType]::ParameterName, 'Do not ask for confirmation')
            [CompletionResult]::new('--importer-was-reset', '--importer-was-reset', [CompletionResultType]::ParameterName, 'The importer''s own file count was reset too: allow a `--file-count` lower than what the export stored')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opencti-stream-exporter;state;import' {
            [CompletionResult]::new('--connector-id', '--connector-id', [CompletionResultType]::ParameterName, 'Id of the reference connector on OpenCTI [default: `connector.id`]')
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--state', '--state', [CompletionResultType]::ParameterName, 'State file [default: `state.path`, else next to the config file]')
            [CompletionResult]::new('--from-opencti', '--from-opencti', [CompletionResultType]::ParameterName, 'Read the state from OpenCTI, where the reference connector kept it')
            [CompletionResult]::new('--replace', '--replace', [CompletionResultType]::ParameterName, 'Replace an existing state file (never with a lower file count)')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help (see more with ''--help'')')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opencti-stream-exporter;state;help' {
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'Print the saved state: cursor, next file number, pending upload, last run')
            [CompletionResult]::new('reset', 'reset', [CompletionResultType]::ParameterValue, 'Reset the stream position (the file numbering is kept), optionally to a given cursor')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Take over from the reference Python connector: read its state from OpenCTI and save it as this tool''s state')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'opencti-stream-exporter;state;help;show' {
            break
        }
        'opencti-stream-exporter;state;help;reset' {
            break
        }
        'opencti-stream-exporter;state;help;import' {
            break
        }
        'opencti-stream-exporter;state;help;help' {
            break
        }
        'opencti-stream-exporter;check-stream' {
            [CompletionResult]::new('-c', '-c', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--config', '--config', [CompletionResultType]::ParameterName, 'YAML configuration file [default: ./config.yml when present]')
            [CompletionResult]::new('--state', '--state', [CompletionResultType]::ParameterName, 'State file [default: `state.path`, else next to the config file]')
            [CompletionResult]::new('--json', '--json', [CompletionResultType]::ParameterName, 'Print JSON for machines')
            [CompletionResult]::new('--verify', '--verify', [CompletionResultType]::ParameterName, 'Also read back every exported file: metadata, SHA-256, lines, and the number sequence')
            [CompletionResult]::new('-q', '-q', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('--quiet', '--quiet', [CompletionResultType]::ParameterName, 'Print only warnings and errors')
            [CompletionResult]::new('-v', '-v', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('--verbose', '--verbose', [CompletionResultType]::ParameterName, 'Print more (-v: debug, -vv: trace)')
            [CompletionResult]::new('-h', '-h', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('--help', '--help', [CompletionResultType]::ParameterName, 'Print help')
            [CompletionResult]::new('-V', '-V ', [CompletionResultType]::ParameterName, 'Print version')
            [CompletionResult]::new('--version', '--version', [CompletionResultType]::ParameterName, 'Print version')
            break
        }
        'opencti-stream-exporter;help' {
            [CompletionResult]::new('run', 'run', [CompletionResultType]::ParameterValue, 'Export the live stream: follow it, write batch files, save the cursor')
            [CompletionResult]::new('state', 'state', [CompletionResultType]::ParameterValue, 'Show or reset the saved state (cursor, file count)')
            [CompletionResult]::new('check-stream', 'check-stream', [CompletionResultType]::ParameterValue, 'Check the configuration, OpenCTI, the stream and the storage, item by item')
            [CompletionResult]::new('help', 'help', [CompletionResultType]::ParameterValue, 'Print this message or the help of the given subcommand(s)')
            break
        }
        'opencti-stream-exporter;help;run' {
            break
        }
        'opencti-stream-exporter;help;state' {
            [CompletionResult]::new('show', 'show', [CompletionResultType]::ParameterValue, 'Print the saved state: cursor, next file number, pending upload, last run')
            [CompletionResult]::new('reset', 'reset', [CompletionResultType]::ParameterValue, 'Reset the stream position (the file numbering is kept), optionally to a given cursor')
            [CompletionResult]::new('import', 'import', [CompletionResultType]::ParameterValue, 'Take over from the reference Python connector: read its state from OpenCTI and save it as this tool''s state')
            break
        }
        'opencti-stream-exporter;help;state;show' {
            break
        }
        'opencti-stream-exporter;help;state;reset' {
            break
        }
        'opencti-stream-exporter;help;state;import' {
            break
        }
        'opencti-stream-exporter;help;check-stream' {
            break
        }
        'opencti-stream-exporter;help;help' {
            break
        }
    })

    $completions.Where{ $_.CompletionText -like "$wordToComplete*" } |
        Sort-Object -Property ListItemText
}
